"""Masked autoregressive flows: the `MADE` conditioner and `MaskedAutoregressive`, with
any elementwise transformer and optional conditioning; and the names `MAF`,
`ConditionalMAF`, `MaskedAutoregressiveSpline` and `ConditionalMaskedAutoregressiveSpline`
that build one."""

import inspect
from collections.abc import Callable, Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._flow import AbstractFlow, ShapeError
from .._types import Cond, Key, Scalar, Vector
from ..nn import MADE, CondSpec, cast_floating, made_ordering, read_cond, record_cond
from ._spline import RationalQuadraticSpline
from ._transformers import (
    ElementwiseAffine,
    apply_transformer,
    check_transformer,
    initial_params,
    n_params,
    scalar_template,
)

# --------------------------------------------------------------------------------------
# The layer.
# --------------------------------------------------------------------------------------


def _builder(fn):
    fn.__nux_builder__ = True
    return fn


class MaskedAutoregressive(AbstractFlow):
    """A masked autoregressive flow (Papamakarios et al. 2017; NuX's `MAF`) on vectors,
    with any elementwise transformer.

    A [`nux_eqx.bijective.MADE`][] gives, for each feature `i`, the parameters of the
    transformer as functions of the features before `i` in the ordering; then
    `z_i = f(x_i; made(x)_i)`. The contribution is the summed `log|f'|`; the Jacobian
    `dz/dx` is triangular in the ordering. The transformer is any elementwise bijective
    layer (see [`nux_eqx.Coupling`][] for how its parameters are counted and supplied):
    [`nux_eqx.ElementwiseAffine`][] (default; `MAF`), [`nux_eqx.RationalQuadraticSpline`][]
    (`MaskedAutoregressiveSpline`), or a user's own. The MADE's output layer starts at
    zero, so the layer starts at the transformer's initial map (the identity for these).

    The density direction (forward, `x -> z`) is one MADE pass; sampling (reverse) takes
    `dim` sequential MADE passes in a `jax.lax.scan`. An inverse autoregressive flow (fast
    sampling) is `nux_eqx.Invert(MaskedAutoregressive(...))`.

    **Orderings.** `ordering="sequential"` generates feature 0 first, `"reversed"` the last
    one first, `"random"` a permutation fixed by the integer `seed` at construction (pure
    Python, so it is the same on every machine and version); an explicit permutation is
    also accepted. The ordering and the masks are static: derived from `ordering`, `seed`
    and the data's dimension, never trained, never stored as leaves. Stack layers with
    different orderings (or a `Reverse()` between them).

    **Conditioning.** Initialised with a `cond`, the layer records its structure (a
    [`nux_eqx.nn.CondSpec`][]) and reads it at every call: the conditioning features
    (`nux_eqx.nn.cond_features(cond, x.shape)`, every leaf flattened) connect to every unit
    of the MADE's first hidden layer, unmasked, so the Jacobian in `x` stays triangular;
    some hidden units see the conditioning only, so every feature's parameters (the first
    one's too) depend on `cond`. Initialised without `cond`, it takes none.

    ```python
    import jax.random as jr
    import nux_eqx as nux

    x = jr.normal(jr.key(0), (64, 6))                       # a batch of (6,) vectors
    maf = nux.init(nux.MaskedAutoregressive(hidden_layer_sizes=(32, 32)), x, key=jr.key(1))
    z, log_det = maf(x[0])                                  # z: (6,), log_det: ()
    x0, _ = maf(z, reverse=True)                            # sampling direction: (6,)

    spline = nux.MaskedAutoregressive(
        nux.RationalQuadraticSpline(K=8), hidden_layer_sizes=(32, 32), ordering="random"
    )
    c = jr.normal(jr.key(2), (64, 2))                       # conditioning, (2,) each
    spline = nux.init(spline, x, key=jr.key(3), cond=c)
    z, log_det = spline(x[0], cond=c[0])
    ```

    **Arguments:**

    - `transformer`: an un-initialised elementwise bijective layer (default
      `ElementwiseAffine()`: shift and `tanh`-bounded log-scale, as NuX's MAF).
    - `hidden_layer_sizes`: the MADE's hidden widths (default `(1024, 1024)`); a width of
      at least `dim - 1` lets every feature see all the earlier ones.
    - `ordering`: `"sequential"` (default), `"reversed"`, `"random"` or a permutation.
    - `seed`: an int that fixes the `"random"` ordering (default 0).
    - `activation`: the MADE's hidden activation (default `jax.nn.relu`).
    - `conditional`: `None` (default): conditional when `init` is given a `cond`; `True`:
      `init` requires a `cond`; `False`: never reads `cond`.
    """

    made: MADE | None
    transformer: AbstractFlow = eqx.field(static=True)
    hidden_layer_sizes: tuple[int, ...] = eqx.field(static=True)
    ordering: str | tuple[int, ...] = eqx.field(static=True)
    seed: int = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)
    conditional: bool | None = eqx.field(static=True)
    cond_spec: CondSpec | None = eqx.field(static=True, default=None, repr=False)
    template: AbstractFlow | None = eqx.field(static=True, default=None, repr=False)
    layer_kind: ClassVar[str] = "bijective"

    def __init__(
        self,
        transformer: AbstractFlow | None = None,
        hidden_layer_sizes: Sequence[int] = (1024, 1024),
        ordering: str | Sequence[int] = "sequential",
        *,
        seed: int = 0,
        activation: Callable = jax.nn.relu,
        conditional: bool | None = None,
    ):
        owner = "MaskedAutoregressive"
        self.transformer = (
            ElementwiseAffine() if transformer is None else check_transformer(owner, transformer)
        )
        self.hidden_layer_sizes = tuple(int(h) for h in hidden_layer_sizes)
        if any(h < 1 for h in self.hidden_layer_sizes):
            raise ValueError(
                f"{owner}: hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes}."
            )
        if not isinstance(ordering, str):
            ordering = tuple(int(i) for i in ordering)
        made_ordering(ordering, len(ordering), 0)  # raises on a bad name or a non-permutation
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise ValueError(f"{owner}: seed must be an int (it fixes the 'random' ordering), got {seed!r}.")
        if conditional not in (None, True, False):
            raise ValueError(f"{owner}: conditional must be None, True or False, got {conditional!r}.")
        self.ordering, self.seed, self.activation, self.conditional = (
            ordering,
            int(seed),
            activation,
            conditional,
        )
        self.made = None

    def init(self, x_batch, *, key, cond=None):
        shape, dtype = tuple(x_batch.shape[1:]), x_batch.dtype
        if len(shape) != 1:
            raise ShapeError(
                f"MaskedAutoregressive takes vectors (d,), got examples of shape {shape}; apply `Flatten()` first."
            )
        spec = record_cond("MaskedAutoregressive", self.conditional, cond)
        template = scalar_template("MaskedAutoregressive", self.transformer, dtype)
        made = MADE(
            made_ordering(self.ordering, shape[0], self.seed),
            n_params(template),
            self.hidden_layer_sizes,
            cond_size=0 if spec is None else spec.n_features(shape),
            activation=self.activation,
            key=key,
        )
        new = eqx.tree_at(lambda s: s.made, self, cast_floating(made, dtype), is_leaf=lambda v: v is None)
        object.__setattr__(new, "cond_spec", spec)  # static metadata, on the copy
        object.__setattr__(new, "template", template)
        return new

    def transform(self, x: Vector, reverse: bool, *, key: Key, cond: Cond) -> tuple[Vector, Scalar]:
        feats = read_cond("MaskedAutoregressive", self.cond_spec, self.conditional, cond, x.shape, x.dtype)
        theta0 = initial_params(self.template, x.dtype)

        def params(v):
            p = self.made(v, feats)
            return p if theta0 is None else p + theta0[:, None]

        if not reverse:
            z, log_det = apply_transformer(self.template, params(x), x, False)
            return z, jnp.sum(log_det)

        # Step k recomputes every parameter from the current estimate and inverts; feature
        # order[k] is exact after step k, since its parameters depend on earlier features
        # only. The last step's parameters are exact for every feature, so its log_det is
        # the forward one at the reconstructed x.
        def step(carry, _):
            return apply_transformer(self.template, params(carry[0]), x, True), None

        (out, log_det), _ = jax.lax.scan(
            step, (jnp.zeros_like(x), jnp.zeros_like(x)), None, length=x.shape[0]
        )
        return out, jnp.sum(log_det)


@_builder
def MAF(
    hidden_layer_sizes: Sequence[int] = (1024, 1024),
    ordering: str | Sequence[int] = "sequential",
    *,
    seed: int = 0,
    activation: Callable = jax.nn.relu,
) -> MaskedAutoregressive:
    """NuX's `MAF`: `MaskedAutoregressive(ElementwiseAffine(), ...)`, the affine transformer
    `z_i = (x_i - mu_i) * exp(-alpha_i)` with `alpha_i = tanh(.)` in `(-1, 1)` (bounded as
    in NuX, so one layer scales each feature by at most `e`: stack layers for more). An
    IAF is `nux_eqx.Invert(MAF(...))`. Without `cond` at `init` it is unconditional; with
    one, it is [`nux_eqx.ConditionalMAF`][].

    **Arguments:** as for [`nux_eqx.MaskedAutoregressive`][].
    """
    return MaskedAutoregressive(None, hidden_layer_sizes, ordering, seed=seed, activation=activation)


@_builder
def ConditionalMAF(
    hidden_layer_sizes: Sequence[int] = (1024, 1024),
    ordering: str | Sequence[int] = "sequential",
    *,
    seed: int = 0,
    activation: Callable = jax.nn.relu,
) -> MaskedAutoregressive:
    """A [`nux_eqx.MAF`][] that requires a `cond`
    (`MaskedAutoregressive(..., conditional=True)`). A conditional IAF is
    `nux_eqx.Invert(ConditionalMAF(...))`.

    **Arguments:** as for [`nux_eqx.MaskedAutoregressive`][].
    """
    return MaskedAutoregressive(
        None, hidden_layer_sizes, ordering, seed=seed, activation=activation, conditional=True
    )


@_builder
def MaskedAutoregressiveSpline(
    K: int = 8,
    B: float = 3.0,
    hidden_layer_sizes: Sequence[int] = (1024, 1024),
    ordering: str | Sequence[int] = "sequential",
    *,
    seed: int = 0,
    activation: Callable = jax.nn.relu,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
    conditional: bool | None = None,
) -> MaskedAutoregressive:
    """Autoregressive rational-quadratic spline flow (RQ-NSF (AR), Durkan et al. 2019):
    `MaskedAutoregressive(RationalQuadraticSpline(K, B, ...), ...)`. Each feature gets a
    monotone spline with `K` bins on `[-B, B]` and identity tails, whose `3K - 1`
    parameters the MADE computes from the earlier features.

    **Arguments:** `K`, `B`, `min_bin_width`, `min_bin_height`, `min_derivative` as for
    [`nux_eqx.RationalQuadraticSpline`][]; the others as for
    [`nux_eqx.MaskedAutoregressive`][].
    """
    spline = RationalQuadraticSpline(
        K, B, min_bin_width=min_bin_width, min_bin_height=min_bin_height, min_derivative=min_derivative
    )
    return MaskedAutoregressive(
        spline, hidden_layer_sizes, ordering, seed=seed, activation=activation, conditional=conditional
    )


@_builder
def ConditionalMaskedAutoregressiveSpline(*args, **kwargs) -> MaskedAutoregressive:
    """A [`nux_eqx.MaskedAutoregressiveSpline`][] that requires a `cond`
    (`conditional=True`); the same arguments."""
    return MaskedAutoregressiveSpline(*args, **kwargs, conditional=True)


_sig = inspect.signature(MaskedAutoregressiveSpline)
ConditionalMaskedAutoregressiveSpline.__signature__ = _sig.replace(
    parameters=[p for p in _sig.parameters.values() if p.name != "conditional"]
)
del _sig
