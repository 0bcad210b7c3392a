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

    With `weight_norm=True` (NuX's option, its default) the layer uses the
    column-normalised matrix `W / ||W||_col` (each column scaled to unit Euclidean norm)
    in place of `W`, in both directions and in the log-determinant: the learned matrix
    only sets directions, so `|det| <= 1` (Hadamard) and scale is left to `ActNorm`.
    nux_eqx's default is `False` (the plain matrix), as before this option existed.

    **Arguments:**

    - `init`: `"identity"` (NuX) or `"rotation"` (a random orthogonal matrix; default).
    - `weight_norm`: use the column-normalised `W` (default `False`; NuX: `True`).
    """

    W: Float[Array, "c c"] | None = None
    w_init: Literal["identity", "rotation"] = eqx.field(static=True, default="rotation")
    weight_norm: bool = eqx.field(static=True, default=False)

    def __init__(self, init: Literal["identity", "rotation"] = "rotation", *, weight_norm: bool = False):
        if init not in ("identity", "rotation"):
            raise ValueError(f"OneByOneConv: init must be 'identity' or 'rotation', got {init!r}.")
        if not isinstance(weight_norm, bool):
            raise ValueError(f"OneByOneConv: weight_norm must be True or False, got {weight_norm!r}.")
        self.w_init = init
        self.weight_norm = weight_norm
        self.W = None

    def weight(self) -> Float[Array, "c c"]:
        """**Returns:** the matrix the layer applies: `W`, or with `weight_norm` the
        column-normalised `W / ||W||_col`."""
        if not self.weight_norm:
            return self.W
        return self.W / jnp.linalg.norm(self.W, axis=0, keepdims=True)

    def init(self, x_batch, *, key, cond=None):
        if x_batch.ndim != 4:
            raise ShapeError(
                f"OneByOneConv takes (h, w, c) images, got examples of shape {x_batch.shape[1:]}."
            )
        c = x_batch.shape[-1]
        W = initial_matrix(self.w_init, key, c, x_batch.dtype)
        return eqx.tree_at(lambda s: s.W, self, W, is_leaf=lambda v: v is None)

    def transform(self, x: Image, reverse: bool, *, key: Key, cond: Cond) -> tuple[Image, Scalar]:
        M = self.weight()
        W = jnp.linalg.inv(M) if reverse else M
        z = jnp.einsum("ij,hwj->hwi", W, x)
        return z, jnp.linalg.slogdet(M)[1] * (x.shape[0] * x.shape[1])


OnebyOneConv = OneByOneConv
