"""Masked autoregressive flows: the `MADE` conditioner, `MAF` / `ConditionalMAF` (affine
transformer) and `MaskedAutoregressiveSpline` / `ConditionalMaskedAutoregressiveSpline`
(rational-quadratic spline transformer)."""

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

from .._flow import AbstractBijection, ShapeError
from .._types import Cond, Key, Scalar, Vector
from ..nn import cast_floating, cond_features
from ._spline import check_spline_config, n_spline_params, rational_quadratic_spline

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
# Shared machinery. The four layers are final classes; they share these private functions
# instead of a base class.
# --------------------------------------------------------------------------------------


def _check_common(owner, hidden_layer_sizes, ordering, seed):
    hidden = tuple(int(h) for h in hidden_layer_sizes)
    if any(h < 1 for h in hidden):
        raise ValueError(f"{owner}: hidden_layer_sizes must be positive integers, got {hidden}.")
    if isinstance(ordering, str):
        if ordering not in ("sequential", "reversed", "random"):
            raise ValueError(
                f"{owner}: ordering must be 'sequential', 'reversed', 'random' or a permutation "
                f"(a sequence of ints), got {ordering!r}."
            )
    else:
        ordering = tuple(int(i) for i in ordering)
        if sorted(ordering) != list(range(len(ordering))):
            raise ValueError(f"{owner}: ordering {ordering} is not a permutation of range({len(ordering)}).")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(
            f"{owner}: seed must be an int (it fixes the 'random' ordering at construction), got {seed!r}."
        )
    return hidden, ordering, int(seed)


def _cond_shapes(cond, batched: bool) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(jnp.shape(leaf)[1:] if batched else jnp.shape(leaf)) for leaf in jax.tree.leaves(cond))


def _init_made(owner, layer, x_batch, key, cond, n_params, conditional):
    shape = tuple(x_batch.shape[1:])
    if len(shape) != 1:
        raise ShapeError(
            f"{owner} takes vectors (d,), got examples of shape {shape}; apply `Flatten()` first."
        )
    dim = shape[0]
    order = made_ordering(layer.ordering, dim, layer.seed)
    cond_size = 0
    if conditional:
        if not jax.tree.leaves(cond):
            raise ValueError(
                f"{owner} is conditional: pass the batched conditioning to "
                "`nux_eqx.init(flow, x_batch, key=key, cond=cond_batch)` (and `cond=` at every call)."
            )
        cond0 = jax.tree.map(lambda a: jnp.zeros(jnp.shape(a)[1:], x_batch.dtype), cond)
        cond_size = jax.eval_shape(lambda c: cond_features(c, shape), cond0).shape[-1]
    made = MADE(
        order,
        n_params,
        layer.hidden_layer_sizes,
        cond_size=cond_size,
        activation=layer.activation,
        key=key,
    )
    made = cast_floating(made, x_batch.dtype)
    new = eqx.tree_at(lambda s: s.made, layer, made, is_leaf=lambda v: v is None)
    if conditional:
        # `cond_shape` is static metadata: set it on the copy `tree_at` returned.
        object.__setattr__(new, "cond_shape", _cond_shapes(cond, batched=True))
    return new


def _features(owner, layer, x, cond):
    got = _cond_shapes(cond, batched=False)
    if got != layer.cond_shape:
        raise ShapeError(
            f"{owner} was initialised with cond leaves of shapes {layer.cond_shape} (one example), "
            f"but got {got}; pass the same conditioning structure, one example per call (batch it "
            "with jax.vmap alongside x)."
        )
    return cond_features(cond, x.shape).astype(x.dtype)


def _affine(params, x, reverse):
    """The affine transformer: `z = (x - mu) exp(-alpha)`, `alpha = tanh(.)`."""
    mu, alpha = params[0], jnp.tanh(params[1])
    out = x * jnp.exp(alpha) + mu if reverse else (x - mu) * jnp.exp(-alpha)
    return out, -alpha


def _spline(layer, params, x, reverse):
    K = layer.K
    return rational_quadratic_spline(
        x,
        params[:K].T,
        params[K : 2 * K].T,
        params[2 * K :].T,
        B=layer.B,
        inverse=reverse,
        min_bin_width=layer.min_bin_width,
        min_bin_height=layer.min_bin_height,
        min_derivative=layer.min_derivative,
    )


def _autoregressive(made, transformer, x, reverse, feats):
    """Forward (density) in one MADE pass; reverse by `lax.scan` over the dimensions.

    `transformer(params, v, reverse) -> (out, log_det)` acts elementwise. In reverse, step
    `k` recomputes every parameter from the current estimate and inverts; feature `order[k]`
    is exact after step `k`, because its parameters depend on earlier features only. The
    last step's parameters are exact for every feature, so its `log_det` is the forward
    one at the reconstructed `x`."""
    if not reverse:
        out, log_det = transformer(made(x, feats), x, False)
        return out, jnp.sum(log_det)

    def step(carry, _):
        x_est, _ = carry
        return transformer(made(x_est, feats), x, True), None

    init = (jnp.zeros_like(x), jnp.zeros_like(x))
    (out, log_det), _ = jax.lax.scan(step, init, None, length=x.shape[0])
    return out, jnp.sum(log_det)


class MAF(AbstractBijection):
    """Masked autoregressive flow (Papamakarios et al. 2017; NuX's `MAF`), on vectors.

    A [`nux_eqx.bijective.MADE`][] gives, for each feature `i`, a shift `mu_i` and a raw
    log-scale, both functions of the features before `i` in the ordering; then

    `z_i = (x_i - mu_i) * exp(-alpha_i)`, with `alpha_i = tanh(raw_i)` in `(-1, 1)`

    (bounded as in NuX, so one layer scales each feature by at most `e`: stack layers for
    more). The contribution is `-sum(alpha)`. The Jacobian `dz/dx` is triangular in the
    ordering.

    The density direction (forward, `x -> z`) is one MADE pass; sampling (reverse) takes
    `dim` sequential MADE passes in a `jax.lax.scan`.

    **IAF.** An inverse autoregressive flow is `nux_eqx.Invert(MAF(...))`: fast sampling
    (one pass), density in `dim` passes; there is no separate class.

    **Orderings.** `ordering="sequential"` generates feature 0 first, `"reversed"` the last
    one first, `"random"` a permutation fixed by the integer `seed` at construction (pure
    Python, so it is the same on every machine and version); an explicit permutation is
    also accepted. The ordering and the masks are static: derived from `ordering`, `seed`
    and the data's dimension, never trained, never stored as leaves. Stack layers with
    different orderings (or a `Reverse()` between them).

    **Arguments:**

    - `hidden_layer_sizes`: the MADE's hidden widths (default `(1024, 1024)`); a width of
      at least `dim - 1` lets every feature see all the earlier ones.
    - `ordering`: `"sequential"` (default), `"reversed"`, `"random"` or a permutation.
    - `seed`: an int that fixes the `"random"` ordering (default 0).
    - `activation`: the MADE's hidden activation (default `jax.nn.relu`).
    """

    made: MADE | None
    hidden_layer_sizes: tuple[int, ...] = eqx.field(static=True)
    ordering: str | tuple[int, ...] = eqx.field(static=True)
    seed: int = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (1024, 1024),
        ordering: Ordering | Sequence[int] = "sequential",
        *,
        seed: int = 0,
        activation: Callable = jax.nn.relu,
    ):
        self.hidden_layer_sizes, self.ordering, self.seed = _check_common(
            "MAF", hidden_layer_sizes, ordering, seed
        )
        self.activation = activation
        self.made = None

    def init(self, x_batch, *, key, cond=None):
        return _init_made("MAF", self, x_batch, key, None, 2, conditional=False)

    def transform(self, x: Vector, reverse: bool, *, key: Key, cond: Cond) -> tuple[Vector, Scalar]:
        return _autoregressive(self.made, _affine, x, reverse, None)


class ConditionalMAF(AbstractBijection):
    """A [`nux_eqx.MAF`][] whose MADE also reads a conditioning `cond`.

    The same map as `MAF`, with shifts and log-scales that are functions of the earlier
    features **and** of `cond`: the conditioning features
    (`nux_eqx.nn.cond_features(cond, x.shape)`, every leaf flattened and concatenated)
    connect to every unit of the MADE's first hidden layer, unmasked, so the Jacobian in
    `x` stays triangular; some hidden units see the conditioning only, so every feature's
    shift and scale (the first one's too) depend on `cond`. `cond` is any pytree of arrays; its leaf shapes are recorded at
    `init` and every call must use the same shapes. A conditional IAF is
    `nux_eqx.Invert(ConditionalMAF(...))`.

    **Orderings.** `ordering="sequential"` generates feature 0 first, `"reversed"` the last
    one first, `"random"` a permutation fixed by the integer `seed` at construction (pure
    Python, so it is the same on every machine and version); an explicit permutation is
    also accepted. The ordering and the masks are static: derived from `ordering`, `seed`
    and the data's dimension, never trained, never stored as leaves. Stack layers with
    different orderings (or a `Reverse()` between them).

    **Arguments:** as for `MAF`.
    """

    made: MADE | None
    hidden_layer_sizes: tuple[int, ...] = eqx.field(static=True)
    ordering: str | tuple[int, ...] = eqx.field(static=True)
    seed: int = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)
    cond_shape: tuple[tuple[int, ...], ...] | None = eqx.field(static=True)
    needs_cond: ClassVar[bool] = True

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (1024, 1024),
        ordering: Ordering | Sequence[int] = "sequential",
        *,
        seed: int = 0,
        activation: Callable = jax.nn.relu,
    ):
        self.hidden_layer_sizes, self.ordering, self.seed = _check_common(
            "ConditionalMAF", hidden_layer_sizes, ordering, seed
        )
        self.activation = activation
        self.cond_shape = None
        self.made = None

    def init(self, x_batch, *, key, cond=None):
        return _init_made("ConditionalMAF", self, x_batch, key, cond, 2, conditional=True)

    def transform(self, x: Vector, reverse: bool, *, key: Key, cond: Cond) -> tuple[Vector, Scalar]:
        feats = _features("ConditionalMAF", self, x, cond)
        return _autoregressive(self.made, _affine, x, reverse, feats)


class MaskedAutoregressiveSpline(AbstractBijection):
    """Autoregressive rational-quadratic spline flow (RQ-NSF (AR), Durkan et al. 2019), on
    vectors.

    Like [`nux_eqx.MAF`][] with the affine transformer replaced by a monotone
    rational-quadratic spline: a MADE gives, for each feature `i`, the `3K - 1`
    unconstrained parameters (widths, heights, interior derivatives) of a spline with `K`
    bins on `[-B, B]` and identity tails (see [`nux_eqx.rational_quadratic_spline`][]),
    as functions of the features before `i`; `z_i = g_i(x_i)`. The contribution is
    `sum log g_i'(x_i)`. The MADE's output layer starts at zero, so the layer starts at
    the identity. Forward (density) is one pass; reverse is a `jax.lax.scan` over the
    dimensions. `Invert(...)` gives the inverse-autoregressive version.

    **Orderings.** `ordering="sequential"` generates feature 0 first, `"reversed"` the last
    one first, `"random"` a permutation fixed by the integer `seed` at construction (pure
    Python, so it is the same on every machine and version); an explicit permutation is
    also accepted. The ordering and the masks are static: derived from `ordering`, `seed`
    and the data's dimension, never trained, never stored as leaves. Stack layers with
    different orderings (or a `Reverse()` between them).

    **Arguments:**

    - `K`: the number of bins (an integer >= 2; default 8).
    - `B`: the half-width of the interval `[-B, B]` (default 3.0); identity outside.
    - `hidden_layer_sizes`: the MADE's hidden widths (default `(1024, 1024)`).
    - `ordering`: `"sequential"` (default), `"reversed"`, `"random"` or a permutation.
    - `seed`: an int that fixes the `"random"` ordering (default 0).
    - `activation`: the MADE's hidden activation (default `jax.nn.relu`).
    - `min_bin_width`, `min_bin_height`: in `(0, 1/K)` (default 1e-3).
    - `min_derivative`: in `(0, 1)` (default 1e-3).
    """

    made: MADE | None
    K: int = eqx.field(static=True)
    B: float = eqx.field(static=True)
    hidden_layer_sizes: tuple[int, ...] = eqx.field(static=True)
    ordering: str | tuple[int, ...] = eqx.field(static=True)
    seed: int = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)
    min_bin_width: float = eqx.field(static=True)
    min_bin_height: float = eqx.field(static=True)
    min_derivative: float = eqx.field(static=True)

    def __init__(
        self,
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
    ):
        owner = "MaskedAutoregressiveSpline"
        self.K, self.B, self.min_bin_width, self.min_bin_height, self.min_derivative = check_spline_config(
            owner, K, B, min_bin_width, min_bin_height, min_derivative
        )
        self.hidden_layer_sizes, self.ordering, self.seed = _check_common(
            owner, hidden_layer_sizes, ordering, seed
        )
        self.activation = activation
        self.made = None

    def init(self, x_batch, *, key, cond=None):
        n = n_spline_params(self.K)
        return _init_made("MaskedAutoregressiveSpline", self, x_batch, key, None, n, conditional=False)

    def transform(self, x: Vector, reverse: bool, *, key: Key, cond: Cond) -> tuple[Vector, Scalar]:
        return _autoregressive(self.made, functools.partial(_spline, self), x, reverse, None)


class ConditionalMaskedAutoregressiveSpline(AbstractBijection):
    """A [`nux_eqx.MaskedAutoregressiveSpline`][] whose MADE also reads a conditioning `cond`.

    The conditioning features (`nux_eqx.nn.cond_features(cond, x.shape)`) connect to every
    unit of the MADE's first hidden layer, unmasked, as in [`nux_eqx.ConditionalMAF`][].
    `cond` is any pytree of arrays; its leaf shapes are recorded at `init` and every call
    must use the same shapes.

    **Orderings.** `ordering="sequential"` generates feature 0 first, `"reversed"` the last
    one first, `"random"` a permutation fixed by the integer `seed` at construction (pure
    Python, so it is the same on every machine and version); an explicit permutation is
    also accepted. The ordering and the masks are static: derived from `ordering`, `seed`
    and the data's dimension, never trained, never stored as leaves. Stack layers with
    different orderings (or a `Reverse()` between them).

    **Arguments:**

    - `K`: the number of bins (an integer >= 2; default 8).
    - `B`: the half-width of the interval `[-B, B]` (default 3.0); identity outside.
    - `hidden_layer_sizes`: the MADE's hidden widths (default `(1024, 1024)`).
    - `ordering`: `"sequential"` (default), `"reversed"`, `"random"` or a permutation.
    - `seed`: an int that fixes the `"random"` ordering (default 0).
    - `activation`: the MADE's hidden activation (default `jax.nn.relu`).
    - `min_bin_width`, `min_bin_height`: in `(0, 1/K)` (default 1e-3).
    - `min_derivative`: in `(0, 1)` (default 1e-3).
    """

    made: MADE | None
    K: int = eqx.field(static=True)
    B: float = eqx.field(static=True)
    hidden_layer_sizes: tuple[int, ...] = eqx.field(static=True)
    ordering: str | tuple[int, ...] = eqx.field(static=True)
    seed: int = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)
    min_bin_width: float = eqx.field(static=True)
    min_bin_height: float = eqx.field(static=True)
    min_derivative: float = eqx.field(static=True)
    cond_shape: tuple[tuple[int, ...], ...] | None = eqx.field(static=True)
    needs_cond: ClassVar[bool] = True

    def __init__(
        self,
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
    ):
        owner = "ConditionalMaskedAutoregressiveSpline"
        self.K, self.B, self.min_bin_width, self.min_bin_height, self.min_derivative = check_spline_config(
            owner, K, B, min_bin_width, min_bin_height, min_derivative
        )
        self.hidden_layer_sizes, self.ordering, self.seed = _check_common(
            owner, hidden_layer_sizes, ordering, seed
        )
        self.activation = activation
        self.cond_shape = None
        self.made = None

    def init(self, x_batch, *, key, cond=None):
        n = n_spline_params(self.K)
        return _init_made(
            "ConditionalMaskedAutoregressiveSpline", self, x_batch, key, cond, n, conditional=True
        )

    def transform(self, x: Vector, reverse: bool, *, key: Key, cond: Cond) -> tuple[Vector, Scalar]:
        feats = _features("ConditionalMaskedAutoregressiveSpline", self, x, cond)
        return _autoregressive(self.made, functools.partial(_spline, self), x, reverse, feats)
