"""`OneByOneConv`: Glow's invertible 1x1 convolution (a dense channel matrix)."""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._flow import AbstractBijection, ShapeError
from .._maths import initial_matrix
from .._types import Cond, Image, Key, Scalar


class OneByOneConv(AbstractBijection):
    """Glow's invertible 1x1 convolution: `z[i, j] = W x[i, j]` with a learned `c x c` `W`.

    The contribution is `h * w * log|det W|`; reverse applies `W^-1`. NuX started `W` at
    the identity; a random rotation (Glow's choice) mixes channels from the start.

    **Arguments:**

    - `init`: `"identity"` (NuX) or `"rotation"` (a random orthogonal matrix; default).
    """

    W: Float[Array, "c c"] | None = None
    w_init: Literal["identity", "rotation"] = eqx.field(static=True, default="rotation")

    def __init__(self, init: Literal["identity", "rotation"] = "rotation"):
        if init not in ("identity", "rotation"):
            raise ValueError(f"OneByOneConv: init must be 'identity' or 'rotation', got {init!r}.")
        self.w_init = init
        self.W = None

    def init(self, x_batch, *, key, cond=None):
        if x_batch.ndim != 4:
            raise ShapeError(
                f"OneByOneConv takes (h, w, c) images, got examples of shape {x_batch.shape[1:]}."
            )
        c = x_batch.shape[-1]
        W = initial_matrix(self.w_init, key, c, x_batch.dtype)
        return eqx.tree_at(lambda s: s.W, self, W, is_leaf=lambda v: v is None)

    def transform(self, x: Image, reverse: bool, *, key: Key, cond: Cond) -> tuple[Image, Scalar]:
        W = jnp.linalg.inv(self.W) if reverse else self.W
        z = jnp.einsum("ij,hwj->hwi", W, x)
        return z, jnp.linalg.slogdet(self.W)[1] * (x.shape[0] * x.shape[1])


OnebyOneConv = OneByOneConv
