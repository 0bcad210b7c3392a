"""Circular rational-quadratic splines (Rezende et al. 2020, "Normalizing Flows on Tori
and Spheres"): the function `circular_rational_quadratic_spline` and the elementwise
layer `CircularRationalQuadraticSpline`, a transformer for angles in `[-pi, pi)`."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._flow import AbstractBijection, ShapeError
from .._types import AnyShape, Cond, Key, Scalar
from ._spline import check_spline_config, spline_from_knots, spline_knots

_PI = math.pi


def _wrap(v):
    """`v` mapped into `[-pi, pi)` (modulo 2 pi)."""
    return v - 2 * _PI * jnp.floor((v + _PI) / (2 * _PI))


def circular_rational_quadratic_spline(
    x: Float[Array, "*batch"],
    widths: Float[Array, "*batch K"],
    heights: Float[Array, "*batch K"],
    derivatives: Float[Array, "*batch K"],
    rotation: Float[Array, "*batch"] | None = None,
    *,
    inverse: bool = False,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Float[Array, "*batch"], Float[Array, "*batch"]]:
    """A circle diffeomorphism of `[-pi, pi)`: a monotone rational-quadratic spline with
    `K` bins whose knots start at `-pi` and end at `pi` with the SAME derivative at both
    ends (Rezende et al. 2020), followed by an optional rotation `z = wrap(g(x) + rotation)`
    (`wrap` maps into `[-pi, pi)`). The matching end derivatives make the map and its
    derivative continuous across `pi ~ -pi`; without the rotation `-pi` is a fixed point.

    Parameters as in [`nux_eqx.spline_knots`][] with `B = pi`, except `derivatives`: `K`
    numbers, the `K - 1` interior knot derivatives and last the shared end derivative
    (`min_derivative + softplus(.)`, 1 at 0). All parameters zero give the identity.
    Inputs outside `[-pi, pi]` are passed through unchanged (contribution 0).

    **Arguments:**

    - `x`: angles in `[-pi, pi)` (the output `z` when `inverse=True`).
    - `widths`, `heights`, `derivatives`: `(..., K)` unconstrained parameters.
    - `rotation`: `(...)` an angle added after the spline (modulo 2 pi), or `None`.
    - `inverse`: evaluate the inverse map.
    - `min_bin_width`, `min_bin_height`, `min_derivative`: lower bounds, as for
      [`nux_eqx.rational_quadratic_spline`][].

    **Returns:** `(out, log_det)`, shaped like `x`: the image (preimage when `inverse`)
    and `log g'` at the angle on the forward side.
    """
    K = widths.shape[-1]
    if derivatives.shape[-1] != K:
        raise ShapeError(
            "circular_rational_quadratic_spline: derivatives need K entries on the last axis "
            f"(K - 1 interior knots and the shared end), got {derivatives.shape[-1]} for K={K}."
        )
    xk, yk, dk = spline_knots(
        widths,
        heights,
        derivatives[..., :-1],
        B=_PI,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )
    shift = math.log(math.expm1(1.0 - min_derivative))
    d_end = min_derivative + jax.nn.softplus(derivatives[..., -1:] + shift)
    dk = jnp.concatenate([d_end, dk[..., 1:-1], d_end], axis=-1)
    inside = (x >= -_PI) & (x <= _PI)
    if inverse:
        y = x if rotation is None else jnp.where(inside, _wrap(x - rotation), x)
        return spline_from_knots(y, xk, yk, dk, inverse=True)
    out, log_det = spline_from_knots(x, xk, yk, dk)
    if rotation is not None:
        out = jnp.where(inside, _wrap(out + rotation), out)
    return out, log_det


class CircularRationalQuadraticSpline(AbstractBijection):
    """An elementwise circular rational-quadratic spline for angles (Rezende et al. 2020;
    zuko's and normflows' circular splines), with learned parameters per feature.

    Every entry of `x` is an angle in `[-pi, pi)` with its own spline: `K` monotone bins
    from `-pi` to `pi`, the same derivative at both ends (so the map is smooth on the
    circle), then a learned rotation modulo 2 pi (`rotation=True`, default), which lets
    mass move across `pi ~ -pi`. See [`nux_eqx.circular_rational_quadratic_spline`][].
    Parameters start at zero: the identity. The contribution is `sum log g'(x)`. Pair it
    with [`nux_eqx.UniformPrior`][]`(-pi, pi)` for densities on the circle or torus.
    Inputs outside `[-pi, pi]` pass through unchanged; the angle `pi` itself is the same
    point as `-pi`, so a rotated map may return `-pi` for it.

    As a transformer, `Coupling(CircularRationalQuadraticSpline(K=8))` is a circular
    coupling for the torus (the network gives `3K + 1` parameters per feature, `3K`
    without rotation; give the conditioner `cos` and `sin` of its input so the density is
    periodic in it too, as the torus tutorial does) and
    `MaskedAutoregressive(CircularRationalQuadraticSpline())` an autoregressive one.

    **Arguments:**

    - `K`: the number of bins (an integer >= 2; default 8).
    - `rotation`: learn a rotation after the spline (default `True`).
    - `min_bin_width`, `min_bin_height`: in `(0, 1/K)` (default 1e-3).
    - `min_derivative`: in `(0, 1)` (default 1e-3).
    """

    widths: Array | None
    heights: Array | None
    derivatives: Array | None
    rotation: Array | None
    K: int = eqx.field(static=True)
    rotate: bool = eqx.field(static=True)
    min_bin_width: float = eqx.field(static=True)
    min_bin_height: float = eqx.field(static=True)
    min_derivative: float = eqx.field(static=True)

    def __init__(
        self,
        K: int = 8,
        *,
        rotation: bool = True,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ):
        self.K, _, self.min_bin_width, self.min_bin_height, self.min_derivative = check_spline_config(
            "CircularRationalQuadraticSpline", K, _PI, min_bin_width, min_bin_height, min_derivative
        )
        if rotation not in (True, False):
            raise ValueError(
                f"CircularRationalQuadraticSpline: rotation must be True or False, got {rotation!r}."
            )
        self.rotate = bool(rotation)
        self.widths = self.heights = self.derivatives = self.rotation = None

    def init(self, x_batch, *, key, cond=None):
        shape, dt = tuple(x_batch.shape[1:]), x_batch.dtype
        new = (
            jnp.zeros((*shape, self.K), dt),
            jnp.zeros((*shape, self.K), dt),
            jnp.zeros((*shape, self.K), dt),
            jnp.zeros(shape, dt) if self.rotate else None,
        )
        return eqx.tree_at(
            lambda s: (s.widths, s.heights, s.derivatives, s.rotation), self, new, is_leaf=lambda v: v is None
        )

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        z, log_det = circular_rational_quadratic_spline(
            x,
            self.widths,
            self.heights,
            self.derivatives,
            self.rotation,
            inverse=reverse,
            min_bin_width=self.min_bin_width,
            min_bin_height=self.min_bin_height,
            min_derivative=self.min_derivative,
        )
        return z, jnp.sum(log_det)
