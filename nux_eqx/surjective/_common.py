"""Shared helpers of the surjective layers: conditioner networks and conditional
Gaussians."""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from .._containers import ChainRuleCond
from ..nn import DefaultNetwork, cond_features
from ..nn import build_network as nn_build_network


def features(primary: Array, cond: PyTree, like: tuple[int, ...]) -> Array:
    """The network input: `primary` (an array shaped like an example) together with the
    outer conditioning, as `nux_eqx.nn.cond_features(ChainRuleCond(primary, cond), like)`."""
    return cond_features(ChainRuleCond(primary, cond), like)


def batched_feature_shape(primary_batch: Array, cond_batch: PyTree, like: tuple[int, ...]) -> tuple[int, ...]:
    """The unbatched shape of `features` for a batch (shape-only)."""
    p0 = jax.ShapeDtypeStruct(primary_batch.shape[1:], primary_batch.dtype)
    c0 = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)), cond_batch)
    return tuple(jax.eval_shape(lambda p, c: features(p, c, like), p0, c0).shape)


def build_network(
    owner: str,
    factory: Callable | None,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    dtype,
    key,
    hidden_layer_sizes: Sequence[int],
    n_channels: int,
):
    """Build a conditioner with `factory` (or NuX's default network sized by
    `hidden_layer_sizes` / `n_channels`) through the one conditioner path,
    [`nux_eqx.nn.build_network`][] (output shape checked, dtype cast)."""
    if factory is None:
        factory = DefaultNetwork(tuple(hidden_layer_sizes), n_channels, zero_init=True)
    return nn_build_network(owner, factory, in_shape, out_shape, dtype=dtype, key=key)


def network_dtype(net) -> jnp.dtype:
    return jax.tree.leaves(net)[0].dtype
