"""Transformers: elementwise bijections whose parameters a conditioner supplies.

A coupling or autoregressive layer takes `transformer=`, any elementwise bijective layer
(an `AbstractFlow` whose `transform` acts elementwise on an example of any shape and whose
parameters are stored unconstrained). The layer initialises it on a batch of scalars,
counts its parameters, has its network output that many numbers per transformed feature,
unravels them into the transformer and vmaps it over the features (FlowJAX's pattern).
This module holds the built-in affine and additive transformers and that mechanism.
"""

import dataclasses
import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._context import CHECK_FINITE, set_flag
from .._flow import AbstractBijection, AbstractFlow
from .._types import AnyShape, Cond, Key, Scalar

ScaleParam = Literal["tanh", "exp", "softplus", "inverse_softplus"]
_SOFTPLUS_MIN = 1e-3
_INVERSE_SOFTPLUS_MIN = 1e-2


def _u_for_unit_scale(floor: float) -> float:
    """The `u` with `softplus(u) + floor == 1`."""
    return math.log(math.expm1(1.0 - floor))


# Each scale parametrisation: (the `u` that gives scale 1, `u -> log scale`).
_SCALES = {
    "tanh": (0.0, jnp.tanh),
    "exp": (0.0, lambda u: u),
    "softplus": (_u_for_unit_scale(_SOFTPLUS_MIN), lambda u: jnp.log(jax.nn.softplus(u) + _SOFTPLUS_MIN)),
    "inverse_softplus": (
        _u_for_unit_scale(_INVERSE_SOFTPLUS_MIN),
        lambda u: -jnp.log(jax.nn.softplus(u) + _INVERSE_SOFTPLUS_MIN),
    ),
}


class ElementwiseAffine(AbstractBijection):
    """An elementwise affine map with a learned shift and scale per feature:
    `z = (x - shift) / scale`, contribution `-sum(log scale)`.

    As a transformer (`Coupling(transformer=ElementwiseAffine())`, the default) it is
    RealNVP's and MAF's affine map, the network giving `shift` and the unconstrained scale
    parameter of each feature. Parameters start at the identity.

    **Arguments:**

    - `scale`: how the unconstrained parameter `u` gives the scale: `"tanh"` (default,
      NuX's bounded `log scale = tanh(u)`, so one layer scales by at most `e`), `"exp"`
      (`log scale = u`), `"softplus"` (`scale = softplus(u) + 1e-3`), or
      `"inverse_softplus"` (`1 / scale = softplus(u) + 1e-2`: `z = (x - shift) *
      (softplus(u) + 0.01)`, so the map to the latent space shrinks a feature at most
      100-fold and may stretch it freely, which sharply peaked densities need; FlowJAX's
      affine map in its density direction, and [`nux_eqx.MaskedAutoregressiveFlow`][]'s
      choice).
    """

    shift: Array | None
    scale_param: Array | None
    scale: ScaleParam = eqx.field(static=True)

    def __init__(self, scale: ScaleParam = "tanh"):
        if scale not in _SCALES:
            raise ValueError(f"ElementwiseAffine: scale must be one of {tuple(_SCALES)}, got {scale!r}.")
        self.scale = scale
        self.shift = self.scale_param = None

    def init(self, x_batch, *, key, cond=None):
        shape, dt = x_batch.shape[1:], x_batch.dtype
        new = (jnp.zeros(shape, dt), jnp.full(shape, _SCALES[self.scale][0], dt))
        return eqx.tree_at(lambda s: (s.shift, s.scale_param), self, new, is_leaf=lambda v: v is None)

    def log_scale(self) -> Array:
        return _SCALES[self.scale][1](self.scale_param)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        log_s = self.log_scale()
        z = x * jnp.exp(log_s) + self.shift if reverse else (x - self.shift) * jnp.exp(-log_s)
        return z, -jnp.sum(jnp.broadcast_to(log_s, x.shape))


class Shift(AbstractBijection):
    """An elementwise shift `z = x - shift` with a learned shift per feature (volume
    preserving: contribution 0). As a transformer it is the additive coupling of NICE
    (`Coupling(kind="additive")`). Starts at the identity."""

    shift: Array | None

    def __init__(self):
        self.shift = None

    def init(self, x_batch, *, key, cond=None):
        new = jnp.zeros(x_batch.shape[1:], x_batch.dtype)
        return eqx.tree_at(lambda s: s.shift, self, new, is_leaf=lambda v: v is None)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        return (x + self.shift if reverse else x - self.shift), jnp.zeros((), x.dtype)


# --------------------------------------------------------------------------------------
# The mechanism: a transformer initialised on scalars, with its parameters as slots.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where one parameter leaf of a scalar transformer goes: its shape and initial value."""

    shape: tuple[int, ...]
    init: tuple[float, ...]

    def __repr__(self) -> str:
        return f"Slot{self.shape}"


def check_transformer(owner: str, transformer) -> AbstractFlow:
    """Validate `transformer=` at construction: an un-initialised bijective layer."""
    if not isinstance(transformer, AbstractBijection):
        raise TypeError(
            f"{owner}: transformer must be an elementwise bijective layer such as "
            f"`ElementwiseAffine()` or `RationalQuadraticSpline()`, got {transformer!r}."
        )
    if jax.tree.leaves(transformer):
        raise ValueError(
            f"{owner}: pass the transformer un-initialised (e.g. `RationalQuadraticSpline(K=8)`): "
            "its parameters come from the layer's network."
        )
    return transformer


def scalar_template(owner: str, transformer: AbstractFlow, dtype) -> AbstractFlow:
    """Initialise `transformer` on a batch of scalars and replace each parameter leaf by a
    `_Slot` (its shape and initial value): a static, hashable template."""
    # Concrete even while `init` is traced (e.g. under `eqx.filter_eval_shape` to load a
    # checkpoint): the template is static metadata. A fixed key keeps it deterministic.
    # Without `check_finite`'s checks: they are not needed on this fixed finite batch, and
    # under compile-time evaluation they raised on it (init inside `check_finite()` failed).
    with jax.ensure_compile_time_eval(), set_flag(CHECK_FINITE, False):
        t, _ = transformer.init_and_push(jnp.linspace(-1.0, 1.0, 8, dtype=dtype), key=jax.random.key(0))
    if t.out_shape != ():
        raise ValueError(
            f"{owner}: the transformer must be elementwise (scalar in, scalar out), but "
            f"{type(transformer).__name__} maps () to {t.out_shape}."
        )
    leaves, treedef = jax.tree.flatten(t)
    if not all(eqx.is_inexact_array(a) for a in leaves):
        raise TypeError(
            f"{owner}: the transformer's parameters must all be floating arrays (mark other fields static)."
        )
    slots = [_Slot(tuple(a.shape), tuple(float(v) for v in np.ravel(a))) for a in leaves]
    return jax.tree.unflatten(treedef, slots)


def _slots(template) -> tuple[list, jax.tree_util.PyTreeDef]:
    return jax.tree.flatten(template, is_leaf=lambda v: isinstance(v, _Slot))


def n_params(template) -> int:
    """The number of unconstrained parameters per feature."""
    return sum(math.prod(s.shape) for s in _slots(template)[0])


def initial_params(template, dtype) -> Array | None:
    """The raveled initial parameters, `(n_params,)`, or `None` when they are all zero: a
    layer adds them to its network's output, so a zero last layer starts it at the
    transformer's own initial map."""
    values = [v for s in _slots(template)[0] for v in s.init]
    return jnp.asarray(values, dtype) if any(values) else None


def apply_transformer(template, params: Array, x: Array, reverse: bool) -> tuple[Array, Array]:
    """Run the transformer on every element of `x`.

    **Arguments:**

    - `template`: from `scalar_template`.
    - `params`: `(n_params, *x.shape)`: parameter `p` of element `i` at `params[p][i]`,
      raveled in the transformer's leaf order.
    - `x`: any shape; `reverse`: the direction.

    **Returns:** `(out, log_det)`, both shaped like `x` (per-element contributions).
    """
    slots, treedef = _slots(template)
    flat = params.reshape(params.shape[0], -1)
    # Every leaf is vmapped along its first axis. A scalar parameter (a shift, a
    # log-scale) is a plain row of `params`, with no transpose. A vector one (a spline's K
    # widths) is moved to (n_elements, *slot shape) by one transpose here: vmapped along a
    # trailing axis instead, each reduction and gather over its own axis inside the
    # transformer would transpose (a spline coupling's step: 20.7 -> 17.7 ms).
    leaves, i = [], 0
    flat_t = None
    for s in slots:
        n = math.prod(s.shape)
        if s.shape == ():
            leaves.append(flat[i])
        else:
            flat_t = flat.T if flat_t is None else flat_t
            leaves.append(flat_t[:, i : i + n].reshape(flat.shape[1], *s.shape))
        i += n

    def one(leaves, xi):
        return jax.tree.unflatten(treedef, leaves).transform(xi, reverse, key=None, cond=None)

    out, log_det = jax.vmap(one)(leaves, x.reshape(-1))
    return out.reshape(x.shape), log_det.reshape(x.shape)
