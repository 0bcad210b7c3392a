"""The NuX README's two custom layers, as typed nux_eqx layers, checked with `check_flow`.

    python examples/custom_layers.py

A layer is a final `eqx.Module` whose base class is its kind:
- `nux_eqx.AbstractBijection` here (also `AbstractInjective`, `AbstractSurjective`,
  `AbstractPrior`, `AbstractContainer`); the kind says which checks `check_flow` applies;
- parameters start as `None`; the `init` hook fills them from a batch with `eqx.tree_at`;
- `transform(x, reverse, *, key, cond)` acts on ONE example and returns `(z, contribution)`,
  with jaxtyping annotations that beartype checks when traced. The framework checks
  initialisation and shapes first, so users get its messages, not a beartype dump.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

import nux_eqx as nux
from nux_eqx.testing import check_flow


class OnebyOneConvDense(nux.AbstractBijection):
    """A 1x1 convolution with a dense `c x c` matrix `W`: `z[h, w] = W x[h, w]`."""

    W: Float[Array, "c c"] | None = None

    def init(self, x_batch, *, key, cond=None):
        height, width, channel = x_batch.shape[1:]  # one leading batch axis
        W = jax.nn.initializers.glorot_normal()(key, (channel, channel), x_batch.dtype)
        return eqx.tree_at(lambda s: s.W, self, W, is_leaf=lambda v: v is None)

    def transform(
        self, x: Float[Array, "h w c"], reverse: bool, *, key, cond
    ) -> tuple[Float[Array, "h w c"], Float[Array, ""]]:
        height, width, channel = x.shape  # ONE example: batch with jax.vmap
        W = jnp.linalg.inv(self.W) if reverse else self.W
        z = jnp.einsum("ij,hwj->hwi", W, x)
        log_det = jnp.linalg.slogdet(self.W)[1] * height * width  # same value both ways
        return z, log_det


class MyActNorm(nux.AbstractBijection):
    """ActNorm with data-dependent initialisation: the first batch comes out standardised."""

    b: Float[Array, " c"] | None = None
    log_s: Float[Array, " c"] | None = None

    def init(self, x_batch, *, key, cond=None):
        axes = tuple(range(x_batch.ndim - 1))  # batch and spatial axes
        b = jnp.mean(x_batch, axis=axes)
        log_s = jnp.log(jnp.std(x_batch, axis=axes) + 1e-5)
        return eqx.tree_at(lambda s: (s.b, s.log_s), self, (b, log_s), is_leaf=lambda v: v is None)

    def transform(
        self, x: Float[Array, "*spatial c"], reverse: bool, *, key, cond
    ) -> tuple[Float[Array, "*spatial c"], Float[Array, ""]]:
        if reverse:
            z = jnp.exp(self.log_s) * x + self.b
        else:
            z = (x - self.b) * jnp.exp(-self.log_s)
        log_det = -jnp.sum(self.log_s) * math.prod(x.shape[:-1])
        return z, log_det


def main():
    key = jax.random.key(0)
    x = jax.random.normal(key, (8, 4, 4, 3))
    for layer in (
        OnebyOneConvDense(),
        MyActNorm(),
        nux.sequential(MyActNorm(), OnebyOneConvDense(), nux.UnitGaussianPrior()),
    ):
        check_flow(layer, x, key=key)
        print(f"{type(layer).__name__}: check_flow passed")


if __name__ == "__main__":
    main()
