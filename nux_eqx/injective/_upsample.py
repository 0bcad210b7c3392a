"""Nearest-neighbour upsampling NIFs: `UpSample` and `CouplingUpSample`."""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array

from .._flow import ShapeError
from .._maths import depth_to_space, space_to_depth
from ..nn import cast_floating, default_network
from ._gaussian_nif import (
    upsample,
    upsample_log_hx,
    upsample_pinv,
    upsample_sample_posterior,
)
from ._nif import AbstractCouplingNIF, AbstractNoisyInjective, GaussianOps, check_noise_scale

UPSAMPLE = GaussianOps(upsample, upsample_sample_posterior, upsample_pinv, upsample_log_hx)


def _check_repeats(owner: str, repeats) -> tuple[int, ...]:
    repeats = tuple(int(r) for r in repeats)
    if not repeats or any(r < 1 for r in repeats):
        raise ValueError(f"{owner}: repeats must be positive integers, got {repeats}.")
    return repeats


def _full(repeats: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return repeats + (1,) * (ndim - len(repeats))


class UpSample(AbstractNoisyInjective):
    """NuX's upsampling NIF: `p(x|z) = N(x | upsample(z) + b, diag(exp(log_diag_cov)))`.

    `upsample` repeats every element of `z` `repeats[i]` times along axis `i`
    (nearest-neighbour upsampling; `(2, 2, 1)` doubles the height and width of an
    `(h, w, c)` image), so `z` has shape `x.shape / repeats`. Because each `x` element
    copies exactly one `z` element, `M = Aᵀ Σ^{-1} A` is diagonal and the stochastic
    inverse is closed-form and cheap: `q(z|x)` is a diagonal Gaussian whose mean is the
    precision-weighted block mean of `x - b`. Forward with a key: a sample of `q(z|x)`
    and the contribution `log h(x)`; without a key: the block mean of `x - b` and
    `-½ log det(AᵀA) = -½ size(z) log prod(repeats)`. See
    [`nux_eqx.AbstractNoisyInjective`][].

    `b` and `log_diag_cov` have the shape of `x` and start at 0 (NuX: "the model is very
    sensitive to these parameters").

    **Arguments:**

    - `repeats`: the upsampling factor per axis; missing trailing axes are 1.
    - `s`: the noise scale of sampling (NuX's `s`; default 1.0; 0 switches the noise off).
    """

    b: Array | None
    log_diag_cov: Array | None
    repeats: tuple[int, ...] = eqx.field(static=True)
    s: float = eqx.field(static=True)

    def __init__(self, repeats: tuple[int, ...] = (2, 2, 1), *, s: float = 1.0):
        self.s = check_noise_scale("UpSample", s)
        self.repeats = _check_repeats("UpSample", repeats)
        self.b = None
        self.log_diag_cov = None

    def init(self, x_batch, *, key, cond=None):
        shape = tuple(x_batch.shape[1:])
        if len(self.repeats) > len(shape):
            raise ShapeError(f"UpSample: repeats={self.repeats} has more axes than the examples {shape}.")
        reps = _full(self.repeats, len(shape))
        if any(s % r for s, r in zip(shape, reps)):
            raise ShapeError(
                f"UpSample: every axis of the examples {shape} must be divisible by its repeat "
                f"{reps}; crop or pad the data, or change `repeats`."
            )
        # two distinct buffers (a shared one breaks buffer donation in training steps)
        b, log_diag_cov = jnp.zeros(shape, x_batch.dtype), jnp.zeros(shape, x_batch.dtype)
        return eqx.tree_at(
            lambda s: (s.b, s.log_diag_cov), self, (b, log_diag_cov), is_leaf=lambda v: v is None
        )

    def _reps(self, ndim):
        return _full(self.repeats, ndim)

    def _sample_posterior(self, x, key):
        return upsample_sample_posterior(x, self._reps(x.ndim), self.b, self.log_diag_cov, key)

    def _pinv(self, x):
        return upsample_pinv(x, self._reps(x.ndim), self.b)

    def _generate(self, z, key):
        reps = self._reps(z.ndim)
        x = upsample(z, reps) + self.b
        if key is None:
            return x, upsample_pinv(x, reps, self.b)[1]
        x = x + self.s * jnp.exp(0.5 * self.log_diag_cov) * jr.normal(key, x.shape, x.dtype)
        return x, upsample_log_hx(x, reps, self.b, self.log_diag_cov)


class CouplingUpSample(AbstractCouplingNIF):
    """NuX's coupling version of [`nux_eqx.UpSample`][], for `(h, w, c)` images.

    `x` is squeezed (2x2 space-to-depth, as `Squeeze()`) to `(h/2, w/2, 4c)` and split
    along channels into halves `x1`, `x2`; `z` (shape `x.shape / repeats`) is squeezed and
    split the same way into `z1`, `z2`. Then

        p(x1, x2 | z1, z2) = N(x1 | up(z1) + b1(x2), Σ1(x2)) · N(x2 | up(z2) + b2(up(z1)), Σ2(up(z1)))

    with two `nux_eqx.nn.ConvNet` conditioners (last layers zero: `b = 0`, `Σ = I` at
    init). Forward with a key samples `z1 ~ q1(z1|x)` then `z2 ~ q2(z2|x2, z1)` (both
    closed-form diagonal Gaussians) with contribution
    `log p(x|z) - log q(z|x) = log h1(x) + log h2(x2; z1)`. Without a key it is the exact
    pseudo-inverse with contribution `-½ log det(JᵀJ)` of the generator's Jacobian at `z`,
    computed with `size(z)` forward-mode products (exact, but costly for large latents;
    train with a key).

    The height and width must be divisible by `2 * repeats[:2]` and the channels by
    `repeats[2]`.

    **Arguments:**

    - `repeats`: `(rh, rw, rc)`, the upsampling factor per axis.
    - `n_channels`: the hidden width of the default ConvNets (NuX's keyword).
    - `network_factory`: optional `factory(in_shape, out_shape, *, key) -> module` on one
      image; the output holds `b` then `log_diag_cov` along channels.
    - `s`: the noise scale of sampling (NuX's `s`; default 1.0; 0 switches the noise off).
    """

    network1: eqx.Module | None
    network2: eqx.Module | None
    repeats: tuple[int, int, int] = eqx.field(static=True)
    s: float = eqx.field(static=True)
    n_channels: int = eqx.field(static=True)
    network_factory: Callable | None = eqx.field(static=True)

    def __init__(
        self,
        repeats: tuple[int, ...] = (2, 2, 1),
        n_channels: int = 256,
        network_factory: Callable | None = None,
        *,
        s: float = 1.0,
    ):
        self.s = check_noise_scale("CouplingUpSample", s)
        reps = _check_repeats("CouplingUpSample", repeats)
        if len(reps) > 3:
            raise ValueError(f"CouplingUpSample: repeats has at most 3 axes (h, w, c), got {reps}.")
        self.repeats = _full(reps, 3)
        self.n_channels = int(n_channels)
        self.network_factory = network_factory
        self.network1 = self.network2 = None

    def init(self, x_batch, *, key, cond=None):
        shape = tuple(x_batch.shape[1:])
        if len(shape) != 3:
            raise ShapeError(f"CouplingUpSample takes (h, w, c) images, got examples of shape {shape}.")
        h, w, c = shape
        rh, rw, rc = self.repeats
        if h % (2 * rh) or w % (2 * rw) or c % rc:
            raise ShapeError(
                f"CouplingUpSample(repeats={self.repeats}): the image {shape} needs a height divisible "
                f"by {2 * rh}, a width by {2 * rw} and channels by {rc} (it is squeezed 2x2 first)."
            )
        half = (h // 2, w // 2, 2 * c)
        out = (h // 2, w // 2, 4 * c)
        factory = self.network_factory or (
            lambda i, o, *, key: default_network(i, o, key=key, n_channels=self.n_channels)
        )
        k1, k2 = jr.split(key)
        nets = []
        for kn in (k1, k2):
            net = factory(half, out, key=kn)
            got = jax.eval_shape(net, jax.ShapeDtypeStruct(half, x_batch.dtype))
            if tuple(got.shape) != out:
                raise ShapeError(f"CouplingUpSample: the network maps {half} to {got.shape}, expected {out}.")
            nets.append(cast_floating(net, x_batch.dtype))
        return eqx.tree_at(lambda s: (s.network1, s.network2), self, tuple(nets), is_leaf=lambda v: v is None)

    # ---- the coupling ----
    gaussian: ClassVar[GaussianOps] = UPSAMPLE

    @staticmethod
    def _halves(v):
        s = space_to_depth(v)
        n = s.shape[-1] // 2
        return s[..., :n], s[..., n:]

    def _split_x(self, x):
        return self._halves(x)

    def _split_z(self, z):
        return self._halves(z)

    def _join(self, v1, v2):
        return depth_to_space(jnp.concatenate([v1, v2], axis=-1))

    def _op(self, i):
        return self.repeats

    def _z1_features(self, z1):
        return upsample(z1, self.repeats)
