"""`UniformPrior`: the uniform distribution on a box."""

import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from .._flow import AbstractPrior
from .._types import AnyShape, Cond, Key, Scalar


class UniformPrior(AbstractPrior):
    """The uniform prior on the box `[low, high)^D` (every element of the example), e.g.
    `UniformPrior(-math.pi, math.pi)` on the torus after circular splines
    ([`nux_eqx.CircularRationalQuadraticSpline`][]).

    `log p(x) = -D log(high - low)` inside the box and `-inf` outside. Sampling draws
    uniformly; `temperature` has no effect (a uniform density is its own tempering).

    **Arguments:**

    - `low`, `high`: the bounds, numbers with `low < high` (default `[0, 1)`).
    """

    low: float = eqx.field(static=True)
    high: float = eqx.field(static=True)

    def __init__(self, low: float = 0.0, high: float = 1.0):
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"UniformPrior: need finite bounds with low < high, got low={low}, high={high}.")
        self.low, self.high = low, high

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        inside = jnp.all((x >= self.low) & (x < self.high))
        logp = jnp.asarray(-x.size * math.log(self.high - self.low), x.dtype)
        return x, jnp.where(inside, logp, -jnp.inf).astype(x.dtype)

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        z = jr.uniform(key, self.in_shape, minval=self.low, maxval=self.high)
        return self(z, True, key=None, cond=cond)
