"""`UniformDequantization`: turn discrete data into continuous data with uniform noise."""

import math
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from .._flow import AbstractSurjective
from .._types import AnyShape, Cond, Key, Scalar


class UniformDequantization(AbstractSurjective):
    """NuX's uniform dequantisation: `z = (x + noise_scale * u) / scale` with
    `u ~ U[0, 1)^D`.

    `x` holds integer levels `0 .. scale - 1` (as floats). Needs a `key` in the forward
    direction. The contribution `D (log(noise_scale) - log(scale))` makes the summed
    forward contributions a lower bound on the discrete log-likelihood `log P(x)`
    (variational dequantisation with `q(y|x)` uniform on `[x, x + noise_scale)^D`, which
    lies inside the level's cell `[x, x + 1)^D` when `noise_scale <= 1`). Reverse maps
    `z` back to `floor(z * scale)`, the level it came from.

    `noise_scale < 1` (NuX's `noise_scale`) dequantises with narrower noise, e.g. to keep
    the continuous values closer to the levels; NuX's log-determinant left out the
    `D log(noise_scale)` term, so its objective was not a bound for `noise_scale != 1`.

    **Arguments:**

    - `scale`: the number of levels, e.g. `256.0` for 8-bit images or `2**bits`.
    - `noise_scale`: the width of the uniform noise, in `(0, 1]` (default `None`: 1, as
      NuX). Keyword-only: NuX's first positional argument, but here `scale` comes first.
    """

    scale: float = eqx.field(static=True)
    noise_scale: float = eqx.field(static=True, default=1.0)
    forward_needs_key: ClassVar[bool] = True

    def __init__(self, scale: float = 256.0, *, noise_scale: float | None = None):
        scale = float(scale)
        if not scale > 0:
            raise ValueError(f"UniformDequantization: scale must be > 0, got {scale}.")
        noise_scale = 1.0 if noise_scale is None else float(noise_scale)
        if not 0 < noise_scale <= 1:
            raise ValueError(
                "UniformDequantization: noise_scale (the width of the uniform noise, in units of one level) "
                f"must be in (0, 1] so that the noise stays inside its level's cell, got {noise_scale}."
            )
        self.scale = scale
        self.noise_scale = noise_scale

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        c = jnp.asarray(x.size * (math.log(self.noise_scale) - math.log(self.scale)), x.dtype)
        if reverse:
            return jnp.clip(jnp.floor(x * self.scale), 0, self.scale - 1), c
        u = jr.uniform(key, x.shape, x.dtype)
        return (x + self.noise_scale * u) / self.scale, c


# The reverse direction is deterministic; only forward needs the key.
