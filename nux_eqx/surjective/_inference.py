"""Inference surjections (SurVAE flows, Nielsen et al. 2020): `MaxPool`, `Slice`, `Abs`,
`Sort`.

Each forward pass is a deterministic many-to-one map `x -> z`. The values it discards
are scored by an explicit generative model `p(x | z)`, and `x -> (z, discarded part)` is a
bijection with unit Jacobian, so the contribution `log p(x | z)` makes
`log p(x) = log p(z) + log p(x | z)` EXACT (not a bound). The reverse direction samples
the discarded part from `p(x | z)` and so needs a PRNG key; its contribution is the same
`log p(x | z)` at the `(x, z)` pair it produced.
"""

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

from .._flow import AbstractSurjective, ShapeError
from .._maths import depth_to_space, diag_gaussian_log_prob, space_to_depth
from .._types import AnyShape, Cond, Image, Key, Scalar
from ._common import (
    batched_feature_shape,
    build_network,
    features,
    network_dtype,
)

# --------------------------------------------------------------------------------------
# MaxPool
# --------------------------------------------------------------------------------------


def _blocks(x: Array) -> Array:
    """`(h, w, c)` -> `(h/2, w/2, 4, c)`; block position `p = 2 * di + dj`."""
    h, w, c = x.shape
    return space_to_depth(x).reshape(h // 2, w // 2, 4, c)


def _unblocks(b: Array) -> Array:
    h2, w2, _, c = b.shape
    return depth_to_space(b.reshape(h2, w2, 4 * c))


class MaxPool(AbstractSurjective):
    """SurVAE's max-pooling surjection: 2x2 max-pooling of `(h, w, c)` images, with an
    exact likelihood.

    Forward keeps the maximum `z` of each 2x2 block (per channel):
    `(h, w, c) -> (h/2, w/2, c)`. The generative model of the discarded values given `z`
    picks the position `k` of the maximum in the block from a categorical
    `softmax(index_logits)` and draws each of the other three values as `z - g` with an
    exponential gap `g ~ Exp(scale = exp(log_scale))` (one scale per block position and
    channel). `x -> (z, k, gaps)` is a bijection of unit Jacobian, so the contribution

    `log p(x | z) = sum_blocks [log softmax(index_logits)_k + sum_{j != k} (-log_scale_j - g_j / exp(log_scale_j))]`

    makes `log p(z) + log p(x | z)` the exact log-density (ties have probability zero).
    With `n_channels` (or `network_factory`) the logits and log-scales also depend on `z`
    (and on the outer `cond`) through a conv network whose last layer starts at zero.
    Starts with a uniform position and unit gap scales. Reverse samples `k` and the gaps
    with its key (it needs one).

    **Arguments:**

    - `n_channels`: hidden width of a `nux_eqx.nn.ConvNet` conditioner on `z`; `None`
      (default) for position/channel parameters that do not depend on `z`.
    - `network_factory`: optional `factory(in_shape, out_shape, *, key)`; input
      `(h/2, w/2, c + cond features)`, output `(h/2, w/2, 8c)`: 4c logits then 4c
      log-scales (position-major).
    """

    reverse_needs_key: ClassVar[bool] = True

    index_logits: Float[Array, "4 c"] | None
    log_scale: Float[Array, "4 c"] | None
    network: eqx.Module | None
    n_channels: int | None = eqx.field(static=True)
    network_factory: Callable | None = eqx.field(static=True)

    def __init__(self, n_channels: int | None = None, network_factory: Callable | None = None):
        if n_channels is not None and int(n_channels) < 1:
            raise ValueError(f"MaxPool: n_channels must be >= 1 or None, got {n_channels}.")
        self.n_channels = None if n_channels is None else int(n_channels)
        self.network_factory = network_factory
        self.index_logits = None
        self.log_scale = None
        self.network = None

    @property
    def conditional(self) -> bool:
        return self.n_channels is not None or self.network_factory is not None

    def init(self, x_batch, *, key, cond=None):
        shape = tuple(x_batch.shape[1:])
        if len(shape) != 3 or shape[0] % 2 or shape[1] % 2:
            raise ShapeError(
                f"MaxPool pools 2x2 blocks of (h, w, c) images with even h and w, got examples of "
                f"shape {shape}."
            )
        h, w, c = shape
        dtype = x_batch.dtype
        new = eqx.tree_at(
            lambda s: (s.index_logits, s.log_scale),
            self,
            (jnp.zeros((4, c), dtype), jnp.zeros((4, c), dtype)),
            is_leaf=lambda v: v is None,
        )
        if self.conditional:
            z_batch = jnp.max(jax.vmap(_blocks)(x_batch), axis=3)
            like = (h // 2, w // 2, c)
            in_shape = batched_feature_shape(z_batch, cond, like)
            out_shape = (h // 2, w // 2, 8 * c)
            net = build_network(
                "MaxPool", self.network_factory, in_shape, out_shape, dtype, key, (), self.n_channels or 64
            )
            new = eqx.tree_at(lambda s: s.network, new, net, is_leaf=lambda v: v is None)
        return new

    def _params(self, z: Array, cond) -> tuple[Array, Array]:
        logits, log_scale = self.index_logits, self.log_scale  # (4, c)
        if self.network is None:
            return logits, log_scale
        h2, w2, c = z.shape
        out = self.network(features(z, cond, z.shape).astype(network_dtype(self.network)))
        out = out.astype(z.dtype).reshape(h2, w2, 2, 4, c)
        return logits + out[:, :, 0], log_scale + out[:, :, 1]

    @staticmethod
    def _log_px_given_z(logits, log_scale, k, gaps) -> Array:
        # logits, log_scale: (4, c) or (h2, w2, 4, c); k: (h2, w2, c); gaps: (h2, w2, 4, c).
        log_pk = jax.nn.log_softmax(logits, axis=-2)
        log_pk = jnp.broadcast_to(log_pk, gaps.shape)
        is_max = jnp.arange(4)[:, None] == k[:, :, None, :]
        log_gap = -log_scale - gaps * jnp.exp(-log_scale)
        return jnp.sum(jnp.where(is_max, log_pk, log_gap))

    def transform(
        self, x: Image, reverse: bool, *, key: Key, cond: Cond
    ) -> tuple[Float[Array, "_h _w c"], Scalar]:
        if reverse:
            z = x
            logits, log_scale = self._params(z, cond)
            h2, w2, c = z.shape
            k1, k2 = jr.split(key)
            logits_b = jnp.broadcast_to(logits, (h2, w2, 4, c))
            k = jr.categorical(k1, logits_b, axis=2)
            gaps = jr.exponential(k2, (h2, w2, 4, c), z.dtype) * jnp.exp(log_scale)
            is_max = jnp.arange(4)[:, None] == k[:, :, None, :]
            gaps = jnp.where(is_max, 0.0, gaps)
            out = _unblocks(z[:, :, None, :] - gaps)
            return out, self._log_px_given_z(logits, log_scale, k, gaps)
        b = _blocks(x)
        z = jnp.max(b, axis=2)
        k = jnp.argmax(b, axis=2)
        gaps = z[:, :, None, :] - b
        logits, log_scale = self._params(z, cond)
        return z, self._log_px_given_z(logits, log_scale, k, gaps)


# --------------------------------------------------------------------------------------
# Slice
# --------------------------------------------------------------------------------------


class Slice(AbstractSurjective):
    """SurVAE's slice surjection: keep the first `keep` entries of the last axis, and score
    the dropped ones with a learned conditional Gaussian given the kept ones.

    Forward: `z = x[..., :keep]`, contribution
    `log p(x_drop | x_keep) = log N(x_drop; mean(x_keep), diag(exp(2 log_scale(x_keep))))`,
    where a network of `x_keep` (and of the outer `cond`, if any) gives `mean` and
    `log_scale`; its last layer starts at zero, so `p(x_drop | x_keep)` starts as
    `N(0, I)`. The likelihood is exact: `log p(x) = log p(z) + log p(x_drop | z)`.
    Reverse samples `x_drop` with its key (it needs one). Works on vectors `(d,)` and
    channels of `(h, w, c)` images. (NuX's injective `Slice` is a different, deterministic
    layer.)

    **Arguments:**

    - `keep`: how many entries of the last axis to keep (`1 <= keep < size`).
    - `hidden_layer_sizes`: widths of the MLP for vector examples.
    - `n_channels`: hidden width of the ConvNet for image examples.
    - `network_factory`: optional `factory(in_shape, out_shape, *, key)`; input: `x_keep`
      (followed by cond features), output `(..., 2 * (size - keep))`: means, then
      log-scales.
    """

    reverse_needs_key: ClassVar[bool] = True

    network: eqx.Module | None
    keep: int = eqx.field(static=True)
    hidden_layer_sizes: tuple[int, ...] = eqx.field(static=True)
    n_channels: int = eqx.field(static=True)
    network_factory: Callable | None = eqx.field(static=True)

    def __init__(
        self,
        keep: int,
        hidden_layer_sizes: Sequence[int] = (64, 64),
        n_channels: int = 64,
        network_factory: Callable | None = None,
    ):
        if int(keep) < 1:
            raise ValueError(f"Slice: keep must be >= 1, got {keep}.")
        self.keep = int(keep)
        self.hidden_layer_sizes = tuple(int(h) for h in hidden_layer_sizes)
        self.n_channels = int(n_channels)
        self.network_factory = network_factory
        self.network = None

    def init(self, x_batch, *, key, cond=None):
        shape = tuple(x_batch.shape[1:])
        if len(shape) not in (1, 3):
            raise ShapeError(f"Slice takes vectors (d,) or images (h, w, c), got examples of shape {shape}.")
        if not self.keep < shape[-1]:
            raise ShapeError(
                f"Slice: keep={self.keep} must be smaller than the last axis ({shape[-1]}) so that "
                "something is dropped; keep at least 1 and at most size - 1."
            )
        kept = x_batch[..., : self.keep]
        in_shape = batched_feature_shape(kept, cond, kept.shape[1:])
        out_shape = (*shape[:-1], 2 * (shape[-1] - self.keep))
        net = build_network(
            "Slice",
            self.network_factory,
            in_shape,
            out_shape,
            x_batch.dtype,
            key,
            self.hidden_layer_sizes,
            self.n_channels,
        )
        return eqx.tree_at(lambda s: s.network, self, net, is_leaf=lambda v: v is None)

    def conditional(self, x_keep: Array, cond=None) -> tuple[Array, Array]:
        """**Returns:** `(mean, log_scale)` of `p(x_drop | x_keep)` for one example."""
        out = self.network(features(x_keep, cond, x_keep.shape).astype(network_dtype(self.network)))
        out = out.astype(x_keep.dtype)
        n = out.shape[-1] // 2
        return out[..., :n], out[..., n:]

    def transform(
        self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond
    ) -> tuple[Float[Array, "..."], Scalar]:
        if reverse:
            mean, log_scale = self.conditional(x, cond)
            x_drop = mean + jnp.exp(log_scale) * jr.normal(key, mean.shape, x.dtype)
            return jnp.concatenate([x, x_drop], axis=-1), diag_gaussian_log_prob(x_drop, mean, log_scale)
        x_keep, x_drop = x[..., : self.keep], x[..., self.keep :]
        mean, log_scale = self.conditional(x_keep, cond)
        return x_keep, diag_gaussian_log_prob(x_drop, mean, log_scale)


# --------------------------------------------------------------------------------------
# Abs
# --------------------------------------------------------------------------------------


class Abs(AbstractSurjective):
    """SurVAE's absolute-value surjection: `z = |x|`, with the signs scored by a learned
    Bernoulli per element.

    `x -> (|x|, sign(x))` is a bijection of unit Jacobian, so the contribution
    `log p(sign | z) = sum_i log sigmoid(±logit_i)` (`+` where `x_i >= 0`) makes
    `log p(z) + log p(sign | z)` exact. With the sign probability 1/2 (the start, and the
    optimum for a symmetric density) it equals the symmetric `log p(x)` when `p(z)` is the
    folded density of `|x|`. The prior after `Abs` should live on `z >= 0`. Reverse
    samples the signs with its key (it needs one).
    """

    reverse_needs_key: ClassVar[bool] = True

    logits: AnyShape | None

    def __init__(self):
        self.logits = None

    def init(self, x_batch, *, key, cond=None):
        return eqx.tree_at(
            lambda s: s.logits, self, jnp.zeros(x_batch.shape[1:], x_batch.dtype), is_leaf=lambda v: v is None
        )

    def _log_p_sign(self, positive: Array) -> Array:
        return jnp.sum(jnp.where(positive, jax.nn.log_sigmoid(self.logits), jax.nn.log_sigmoid(-self.logits)))

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        if reverse:
            positive = jr.bernoulli(key, jax.nn.sigmoid(self.logits))
            return jnp.where(positive, x, -x), self._log_p_sign(positive)
        return jnp.abs(x), self._log_p_sign(x >= 0)


# --------------------------------------------------------------------------------------
# Sort
# --------------------------------------------------------------------------------------


class Sort(AbstractSurjective):
    """SurVAE's sorting surjection: `z = sort(x)` along the last axis, contribution
    `-log(D!)` per sorted vector of length `D`.

    The generative direction applies a uniformly random permutation, so
    `p(x | z) = 1 / D!`; `x -> (sort(x), permutation)` is a bijection of unit Jacobian and
    `log p(x) = log p(z) - log D!` is exact (ties have probability zero) - provided the
    density after `Sort` is a density on SORTED vectors (the rest of the flow and its prior
    put all their mass on `z_1 <= ... <= z_D`, e.g. order statistics). A density on all
    of `R^D` there wastes the mass it puts outside the sorted cone: the result is then the
    log of a sub-normalised density (total mass = its probability of the sorted cone, `1/D!`
    for an exchangeable one), a lower bound. Use for exchangeable data (sets). Reverse
    applies a random permutation drawn with its key (it needs one).
    """

    reverse_needs_key: ClassVar[bool] = True

    def _contribution(self, x: Array) -> Array:
        d = x.shape[-1]
        return jnp.asarray(-(x.size // d) * math.lgamma(d + 1), x.dtype)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        if reverse:
            if x.ndim == 0:
                return x, jnp.zeros((), x.dtype)
            return jr.permutation(key, x, axis=-1, independent=True), self._contribution(x)
        if x.ndim == 0:
            return x, jnp.zeros((), x.dtype)
        return jnp.sort(x, axis=-1), self._contribution(x)
