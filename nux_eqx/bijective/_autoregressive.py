"""Masked autoregressive flows: the `MADE` conditioner and `MaskedAutoregressive`, with
any elementwise transformer and optional conditioning; and the names `MAF`,
`ConditionalMAF`, `MaskedAutoregressiveSpline` and `ConditionalMaskedAutoregressiveSpline`
that build one."""

import functools
import math
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._flow import AbstractFlow, ShapeError
from .._types import Cond, Key, Scalar, Vector
from ..nn import CondSpec, cast_floating, read_cond, record_cond
from ._spline import RationalQuadraticSpline
from ._transformers import (
    ElementwiseAffine,
    apply_transformer,
    check_transformer,
    initial_params,
    n_params,
    scalar_template,
)

Ordering = Literal["sequential", "reversed", "random"]

# --------------------------------------------------------------------------------------
# Orderings and masks: pure functions of static data (never trained leaves).
# --------------------------------------------------------------------------------------


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return state, z ^ (z >> 31)


def _random_permutation(n: int, seed: int) -> tuple[int, ...]:
    """A permutation of `range(n)` from `seed`: Fisher-Yates driven by splitmix64, in pure
    Python, so the ordering (which is not stored in checkpoints) never changes with the
    numpy or JAX version."""
    perm = list(range(n))
    state = seed & 0xFFFFFFFFFFFFFFFF
    for i in range(n - 1, 0, -1):
        state, r = _splitmix64(state)
        j = r % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return tuple(perm)


def made_ordering(ordering: Ordering | Sequence[int], dim: int, seed: int = 0) -> tuple[int, ...]:
    """The order in which a MADE generates the `dim` features.

    **Arguments:**

    - `ordering`: `"sequential"` (0, 1, ..., dim-1), `"reversed"` (dim-1, ..., 0),
      `"random"` (a fixed permutation drawn from `seed`), or an explicit permutation.
    - `dim`: the number of features.
    - `seed`: an integer, for `"random"`.

    **Returns:**

    A tuple `order` with `order[k]` the feature generated k-th: `z[order[k]]` depends on
    `x[order[j]]` for `j < k` only.
    """
    if isinstance(ordering, str):
        if ordering == "sequential":
            return tuple(range(dim))
        if ordering == "reversed":
            return tuple(range(dim - 1, -1, -1))
        if ordering == "random":
            return _random_permutation(dim, seed)
        raise ValueError(
            f"ordering must be 'sequential', 'reversed', 'random' or a permutation of range(dim), got {ordering!r}."
        )
    order = tuple(int(i) for i in ordering)
    if sorted(order) != list(range(dim)):
        raise ShapeError(
            f"ordering {order} is not a permutation of range({dim}) (the example has {dim} features)."
        )
    return order


@functools.lru_cache(maxsize=256)
def made_masks(
    order: tuple[int, ...], hidden_layer_sizes: tuple[int, ...], n_params: int, conditional: bool = False
) -> tuple[np.ndarray, ...]:
    """The 0/1 masks of a MADE (Germain et al. 2015), as `(out, in)` numpy arrays.

    Input `i` has degree `rank(i) + 1` (its position in `order`, from 1). Hidden units
    have degrees cycling through `1 .. dim-1` (all 0 when `dim == 1`); a unit sees units of
    lower or equal degree; output `(p, i)` (row `p * dim + i`) sees hidden units of degree
    `< degree(i)`. So parameter `p` of feature `i` depends on the features before `i` in
    `order` only.

    With `conditional=True` the hidden degrees cycle through `0 .. dim-1` instead: units of
    degree 0 see no feature, only the (unmasked) conditioning, and feed every output, so
    the first feature in the ordering is conditioned too.
    """
    dim = len(order)
    in_deg = np.empty(dim, np.int64)
    in_deg[list(order)] = np.arange(1, dim + 1)
    degs = [in_deg]
    for h in hidden_layer_sizes:
        if conditional:
            degs.append(np.arange(h) % dim)
        else:
            degs.append(np.arange(h) % max(1, dim - 1) + min(1, dim - 1))
    masks = [(d_out[:, None] >= d_in[None, :]) for d_in, d_out in zip(degs[:-1], degs[1:])]
    out_deg = np.tile(in_deg, n_params)
    masks.append(out_deg[:, None] > degs[-1][None, :])
    out = tuple(m.astype(np.float32) for m in masks)
    for m in out:
        m.setflags(write=False)
    return out


class MADE(eqx.Module):
    """A masked autoencoder for distribution estimation (Germain et al. 2015) on one vector.

    Maps `x` of shape `(dim,)` (and optional conditioning features) to `(n_params, dim)`
    such that output `[:, i]` depends only on the features before `i` in `order` (see
    [`nux_eqx.bijective.made_masks`][]). Conditioning features connect to every unit of
    the first layer, unmasked; with conditioning some hidden units see only the
    conditioning, so every output (the first feature's too) depends on it. The masks are recomputed from the static `order` and sizes
    when traced; they are never leaves of the module. A weight matrix whose mask is all
    zero (the input layer when `dim == 1`) is `None`.

    **Arguments:**

    - `order`: a permutation of `range(dim)` (see `made_ordering`).
    - `n_params`: outputs per feature.
    - `hidden_layer_sizes`: the hidden widths.
    - `cond_size`: the number of conditioning features (0 for none).
    - `activation`: the hidden activation (static; default `jax.nn.relu`).
    - `zero_init`: start the output layer at zero (default `True`).
    - `key`: a PRNG key.
    """

    weights: tuple[Array | None, ...]
    biases: tuple[Array, ...]
    cond_weight: Array | None
    order: tuple[int, ...] = eqx.field(static=True)
    hidden_layer_sizes: tuple[int, ...] = eqx.field(static=True)
    n_params: int = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        order: Sequence[int],
        n_params: int,
        hidden_layer_sizes: Sequence[int],
        *,
        cond_size: int = 0,
        activation: Callable = jax.nn.relu,
        zero_init: bool = True,
        key: PRNGKeyArray,
    ):
        self.order = tuple(int(i) for i in order)
        self.hidden_layer_sizes = tuple(int(h) for h in hidden_layer_sizes)
        self.n_params = int(n_params)
        self.activation = activation
        dim = len(self.order)
        masks = made_masks(self.order, self.hidden_layer_sizes, self.n_params, bool(cond_size))
        sizes = (dim, *self.hidden_layer_sizes, self.n_params * dim)
        keys = jr.split(key, len(sizes))
        weights, biases = [], []
        for i, (a, b, m) in enumerate(zip(sizes[:-1], sizes[1:], masks)):
            last = i == len(sizes) - 2
            fan_in = a + (cond_size if i == 0 else 0)
            lim = 1.0 / math.sqrt(max(fan_in, 1))
            w = (
                jnp.zeros((b, a))
                if last and zero_init
                else jr.uniform(keys[i], (b, a), minval=-lim, maxval=lim)
            )
            # A fully masked matrix (the input layer when dim == 1) would be an untrainable
            # leaf: leave it out.
            weights.append(w * m if m.any() else None)
            biases.append(jnp.zeros((b,)))
        self.weights, self.biases = tuple(weights), tuple(biases)
        if cond_size:
            b = sizes[1]
            lim = 1.0 / math.sqrt(dim + cond_size)
            if len(sizes) == 2 and zero_init:
                self.cond_weight = jnp.zeros((b, cond_size))
            else:
                self.cond_weight = jr.uniform(keys[-1], (b, cond_size), minval=-lim, maxval=lim)
        else:
            self.cond_weight = None

    def __call__(
        self, x: Float[Array, " dim"], cond: Float[Array, " c"] | None = None
    ) -> Float[Array, "p dim"]:
        masks = made_masks(self.order, self.hidden_layer_sizes, self.n_params, self.cond_weight is not None)
        h = x
        n = len(self.weights)
        for i, (w, b, m) in enumerate(zip(self.weights, self.biases, masks)):
            y = b if w is None else (w * jnp.asarray(m, w.dtype)) @ h + b
            if i == 0 and self.cond_weight is not None:
                y = y + self.cond_weight @ cond
            h = self.activation(y) if i < n - 1 else y
        return h.reshape(self.n_params, x.shape[0])


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
        ordering: Ordering | Sequence[int] = "sequential",
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
        theta0 = initial_params(self.template, x.dtype)[:, None]
        if not reverse:
            z, log_det = apply_transformer(self.template, self.made(x, feats) + theta0, x, False)
            return z, jnp.sum(log_det)

        # Step k recomputes every parameter from the current estimate and inverts; feature
        # order[k] is exact after step k, since its parameters depend on earlier features
        # only. The last step's parameters are exact for every feature, so its log_det is
        # the forward one at the reconstructed x.
        def step(carry, _):
            return apply_transformer(self.template, self.made(carry[0], feats) + theta0, x, True), None

        (out, log_det), _ = jax.lax.scan(
            step, (jnp.zeros_like(x), jnp.zeros_like(x)), None, length=x.shape[0]
        )
        return out, jnp.sum(log_det)


@_builder
def MAF(
    hidden_layer_sizes: Sequence[int] = (1024, 1024),
    ordering: Ordering | Sequence[int] = "sequential",
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
    ordering: Ordering | Sequence[int] = "sequential",
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
    ordering: Ordering | Sequence[int] = "sequential",
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
def ConditionalMaskedAutoregressiveSpline(
    K: int = 8,
    B: float = 3.0,
    hidden_layer_sizes: Sequence[int] = (1024, 1024),
    ordering: Ordering | Sequence[int] = "sequential",
    *,
    seed: int = 0,
    activation: Callable = jax.nn.relu,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> MaskedAutoregressive:
    """A [`nux_eqx.MaskedAutoregressiveSpline`][] that requires a `cond` (same arguments)."""
    return MaskedAutoregressiveSpline(
        K,
        B,
        hidden_layer_sizes,
        ordering,
        seed=seed,
        activation=activation,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
        conditional=True,
    )
