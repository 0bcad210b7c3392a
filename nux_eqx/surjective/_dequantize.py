"""`UniformDequantization`: turn discrete data into continuous data with uniform noise."""

import math
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from .._flow import AbstractSurjective
from .._types import AnyShape, Cond, Key, Scalar


class UniformDequantization(AbstractSurjective):
    """NuX's uniform dequantisation: `z = (x + u) / scale` with `u ~ U[0, 1)^D`.

    `x` holds integer levels `0 .. scale - 1` (as floats). Needs a `key` in the forward
    direction. The contribution `-D log(scale)` makes the summed forward contributions a
    lower bound on the discrete log-likelihood `log P(x)` (variational dequantisation with
    a uniform `q(u|x)`). Reverse maps `z` back to `floor(z * scale)`, the level it came from.

    **Arguments:**

    - `scale`: the number of levels, e.g. `256.0` for 8-bit images or `2**bits`.
    """

    scale: float = eqx.field(static=True)
    forward_needs_key: ClassVar[bool] = True

    def __init__(self, scale: float = 256.0):
        scale = float(scale)
        if not scale > 0:
            raise ValueError(f"UniformDequantization: scale must be > 0, got {scale}.")
        self.scale = scale

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        c = jnp.asarray(-x.size * math.log(self.scale), x.dtype)
        if reverse:
            return jnp.clip(jnp.floor(x * self.scale), 0, self.scale - 1), c
        u = jr.uniform(key, x.shape, x.dtype)
        return (x + u) / self.scale, c


# The reverse direction is deterministic; only forward needs the key.
