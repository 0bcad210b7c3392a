"""`Permute`: a fixed random permutation of the last axis; `Roll`: a cyclic shift of it."""

import functools
import math
import random

import equinox as eqx
import jax
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


@functools.cache
def roll_shift(dim: int) -> int:
    """The shift `Roll()` uses on a last axis of size `dim`: the `k` coprime with `dim`
    nearest to `dim / 2`, the larger one on a tie (`ceil(dim / 2)` for odd `dim`; 5 for 8,
    5 for 6, 1 for 2), and 0 for `dim < 2`.

    Coprime, so that rolling by `k` layer after layer brings every feature to every
    position: a coupling that transforms the first `ceil(dim / 2)` features then transforms
    each feature equally often (in any `dim` consecutive layers, exactly `ceil(dim / 2)`
    times) and conditions it on every other. Near `dim / 2`, so that the features a coupling
    left alone come first for the next one."""
    dim = int(dim)
    if dim < 2:
        return 0
    ks = sorted(range(1, dim), key=lambda k: (abs(2 * k - dim), -k))
    return next(k for k in ks if math.gcd(k, dim) == 1)


class Roll(AbstractBijection):
    """A cyclic shift of the last axis (features, or image channels):
    `z = jnp.roll(x, -shift, axis=-1)`, so `z[i] = x[(i + shift) % d]`; contribution 0.

    Put it between half-mask couplings ([`nux_eqx.RealNVP`][]'s default;
    `NeuralSplineFlow(permutation="roll")`). With the default shift
    ([`nux_eqx.bijective.roll_shift`][]: coprime with `d`, near `d / 2`) the features a
    coupling left alone are transformed by the next one, and every feature is transformed
    equally often: `ceil(d / 2)` times in any `d` consecutive couplings. Random
    permutations ([`nux_eqx.Permute`][]) leave that to chance: in eight couplings on a 7-D
    vector, the permutations drawn for ten seeds transformed the least-served feature two
    or three times and the most-served six or seven (with `Roll()`: four or five each),
    and on the galaxy table (7-D, eight affine couplings, five seeds) the median test NLL
    was -6.26 with random permutations and -6.62 with `Roll()` (Performance page).
    `Reverse()` never transforms the middle feature of an odd-sized vector. For large `d`
    a roll mixes slowly (with shift ~`d / 2` neighbouring features stay on the same side
    for many couplings): on the 63-D `patches` table it was still better for affine
    couplings, but worse for spline couplings, which is why `NeuralSplineFlow` keeps
    random permutations by default.

    Parameter-free and static, so the same `Roll()` serves every block of a
    [`nux_eqx.Repeat`][]. It gathers with fixed indices that XLA is kept from folding
    into slices (folded, the affine coupling flow's training step on a CPU was ~5 %
    slower than with `Permute`'s gather; as it is, the same).

    **Arguments:**

    - `shift`: the shift, an integer (any sign; taken modulo `d`), or `None` (default) for
      [`nux_eqx.bijective.roll_shift`][]`(d)` of the example's last axis `d`.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import nux_eqx as nux

        x = jnp.arange(14.0).reshape(2, 7)
        roll = nux.init(nux.Roll(), x, key=jax.random.key(0))
        z, _ = roll(x[0])
        print(z)  # [4. 5. 6. 0. 1. 2. 3.]
        ```
    """

    shift: int | None = eqx.field(static=True)

    def __init__(self, shift: int | None = None):
        if shift is not None and (isinstance(shift, bool) or not isinstance(shift, (int, np.integer))):
            raise TypeError(f"Roll: shift must be an int or None, got {shift!r}.")
        self.shift = None if shift is None else int(shift)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        d = x.shape[-1]
        k = roll_shift(d) if self.shift is None else self.shift
        idx = (np.arange(d) + (-k if reverse else k)) % max(d, 1)
        # opaque to XLA: folded into slices and concatenations, the step was slower
        idx = jax.lax.optimization_barrier(jnp.asarray(idx, jnp.int32))
        return jnp.take(x, idx, axis=-1), jnp.zeros((), x.dtype)
