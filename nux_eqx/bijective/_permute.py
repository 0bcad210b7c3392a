"""`Permute`: a fixed random permutation of the last axis."""

import functools
import random

import equinox as eqx
import jax.numpy as jnp

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

    The permutation is derived from `seed` and the size of the last axis
    ([`nux_eqx.bijective.permutation`][]), so it is static: never trained, never stored as
    a leaf. It is never the identity. Put it between couplings: unlike `Reverse()`, a
    stack of random permutations transforms every feature of odd-sized vectors (with
    `Reverse()` and a half split, the middle feature of an odd-sized vector is never
    transformed by a coupling).

    **Arguments:**

    - `seed`: an integer; use a different one for each layer of a stack.
    """

    seed: int = eqx.field(static=True)

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        perm = permutation(self.seed, x.shape[-1])
        if reverse:
            inv = [0] * len(perm)
            for i, p in enumerate(perm):
                inv[p] = i
            perm = tuple(inv)
        return jnp.take(x, jnp.asarray(perm), axis=-1), jnp.zeros((), x.dtype)
