"""`Permute`: a fixed random permutation of the last axis."""

import functools
import random

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Int

from .._flow import AbstractBijection
from .._types import AnyShape, Cond, Key, Scalar


@functools.cache
def permutation(seed: int, dim: int) -> tuple[int, ...]:
    """The permutation `Permute(seed)` applies to a last axis of size `dim`.

    Pure Python (`random.Random(seed)`), so it is the same on every machine and version of
    JAX; never the identity when `dim >= 2` (for `dim = 2` it is the swap)."""
    order = list(range(dim))
    if dim < 2:
        return tuple(order)
    rng = random.Random(int(seed))
    while order == sorted(order):
        rng.shuffle(order)
    return tuple(order)


class Permute(AbstractBijection):
    """A fixed random permutation of the last axis (features, or image channels):
    `z = x[..., perm]`; contribution 0.

    With an integer `seed` (the default, 0) the permutation is derived from `seed` and the
    size of the last axis ([`nux_eqx.bijective.permutation`][]), so it is static: never
    trained, never stored as a leaf. With `seed=None` it is drawn by `nux_eqx.init` from
    the init key and stored as an integer array leaf `perm` (integer arrays are never
    trained: `nux_eqx.trainable` and `eqx.is_inexact_array` leave them out), so that the
    blocks of a [`nux_eqx.Repeat`][] each get their own permutation and can still be
    stacked and scanned. Either way it is never the identity. Put it between couplings:
    unlike `Reverse()`, a stack of random permutations transforms every feature of
    odd-sized vectors (with `Reverse()` and a half split, the middle feature of an
    odd-sized vector is never transformed by a coupling).

    **Arguments:**

    - `seed`: an integer (use a different one for each layer of a stack), or `None` to
      draw the permutation from the init key.

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (16, 5))
        block = nux.Sequential(nux.Coupling(hidden_layer_sizes=(8,)), nux.Permute(seed=None))
        flow = nux.init(nux.Repeat(block, 3), x, key=jax.random.key(1))
        print(flow.block.layers[1].perm.shape)   # (3, 5): one permutation per block, stacked
        ```
    """

    seed: int | None = eqx.field(static=True)
    perm: Int[Array, " dim"] | None

    def __init__(self, seed: int | None = 0):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"Permute: seed must be an int or None, got {seed!r}.")
        self.seed = None if seed is None else int(seed)
        self.perm = None

    def init(self, x_batch, *, key, cond=None):
        if self.seed is not None:
            return self
        dim = x_batch.shape[-1]
        perm = jr.permutation(key, dim).astype(jnp.int32)
        identity = jnp.arange(dim, dtype=jnp.int32)
        # never the identity (traceable, so `init` may run under `jax.jit`)
        perm = jnp.where(jnp.all(perm == identity), jnp.roll(identity, 1), perm)
        return eqx.tree_at(lambda p: p.perm, self, perm, is_leaf=lambda v: v is None)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        if self.perm is not None:
            perm = jnp.argsort(self.perm) if reverse else self.perm
            return jnp.take(x, perm, axis=-1), jnp.zeros((), x.dtype)
        if self.seed is None:
            raise ValueError(
                "Permute(seed=None) draws its permutation in nux_eqx.init; initialise the flow first."
            )
        perm = permutation(self.seed, x.shape[-1])
        if reverse:
            inv = [0] * len(perm)
            for i, p in enumerate(perm):
                inv[p] = i
            perm = tuple(inv)
        return jnp.take(x, jnp.asarray(perm), axis=-1), jnp.zeros((), x.dtype)
