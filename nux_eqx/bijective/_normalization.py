"""`ActNorm`: per-feature (per-channel) affine normalisation with data-dependent init."""

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._flow import AbstractBijection
from .._types import AnyShape, Cond, Key, Scalar


class ActNorm(AbstractBijection):
    """Glow's activation normalisation: `z = (x - b) * exp(-log_s)` per last-axis feature.

    Data-dependent: `nux_eqx.init` sets `b` to the batch mean and `log_s` to the log of the
    batch standard deviation over every axis but the last (batch, and `h, w` for images),
    so the first batch comes out standardised. A feature with (near) zero variance in the
    init batch (constant border pixels, NuX's `jnp.ones` example) gets scale 1, so it
    stays finite and invertible. The contribution is `-sum(log_s) * h * w`.
    """

    b: Float[Array, " c"] | None = None
    log_s: Float[Array, " c"] | None = None

    def init(self, x_batch, *, key, cond=None):
        axes = tuple(range(x_batch.ndim - 1))
        mean = jnp.mean(x_batch, axis=axes)
        std = jnp.std(x_batch, axis=axes)
        tiny = 1e-6 if x_batch.dtype == jnp.float32 else 1e-12
        log_s = jnp.where(std > tiny, jnp.log(jnp.where(std > tiny, std, 1.0)), 0.0)
        return eqx.tree_at(lambda s: (s.b, s.log_s), self, (mean, log_s), is_leaf=lambda v: v is None)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        if reverse:
            z = x * jnp.exp(self.log_s) + self.b
        else:
            z = (x - self.b) * jnp.exp(-self.log_s)
        repeat = math.prod(x.shape[:-1])
        return z, -jnp.sum(self.log_s) * repeat
