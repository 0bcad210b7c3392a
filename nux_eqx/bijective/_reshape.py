"""Shape-only bijections: `Reverse`, `Flatten`, `Reshape`, `Transpose`, `Squeeze`, `UnSqueeze`."""

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._flow import AbstractBijection, ShapeError
from .._maths import depth_to_space, space_to_depth
from .._types import AnyShape, Cond, Image, Key, Scalar

_Any = Float[Array, "..."]


def _zero(x):
    return jnp.zeros((), x.dtype)


class Reverse(AbstractBijection):
    """Reverse the last axis, `x[..., ::-1]`: use it between couplings. Its own inverse."""

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        return x[..., ::-1], _zero(x)


class Flatten(AbstractBijection):
    """Flatten one example to a vector; reverse restores the recorded shape."""

    def transform(self, x: _Any, reverse: bool, *, key: Key, cond: Cond) -> tuple[_Any, Scalar]:
        return (x.reshape(self.in_shape) if reverse else x.reshape(-1)), _zero(x)


class Reshape(AbstractBijection):
    """Reshape one example to `shape` (one `-1` allowed); reverse restores it.

    **Arguments:**

    - `shape`: the unbatched output shape.
    """

    shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, shape: tuple[int, ...]):
        shape = tuple(int(s) for s in shape)
        if sum(s == -1 for s in shape) > 1 or any(s == 0 or s < -1 for s in shape):
            raise ValueError(f"Reshape: shape may hold positive sizes and at most one -1, got {shape}.")
        self.shape = shape

    def init(self, x_batch, *, key, cond=None):
        size = math.prod(x_batch.shape[1:])
        known = math.prod(s for s in self.shape if s != -1)
        if (-1 in self.shape and size % known) or (-1 not in self.shape and known != size):
            raise ShapeError(
                f"Reshape: cannot reshape examples of shape {x_batch.shape[1:]} (size {size}) "
                f"to {self.shape}."
            )
        return self

    def transform(self, x: _Any, reverse: bool, *, key: Key, cond: Cond) -> tuple[_Any, Scalar]:
        return (x.reshape(self.in_shape) if reverse else x.reshape(self.shape)), _zero(x)


class Transpose(AbstractBijection):
    """Permute the axes of one example (`jnp.transpose(x, axis_order)`).

    **Arguments:**

    - `axis_order`: a permutation of the example's axes.
    """

    axis_order: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, axis_order: tuple[int, ...]):
        axis_order = tuple(int(a) for a in axis_order)
        if sorted(axis_order) != list(range(len(axis_order))):
            raise ValueError(f"Transpose: axis_order must be a permutation of 0..n-1, got {axis_order}.")
        self.axis_order = axis_order

    def init(self, x_batch, *, key, cond=None):
        if x_batch.ndim - 1 != len(self.axis_order):
            raise ShapeError(
                f"Transpose: axis_order {self.axis_order} has {len(self.axis_order)} axes, "
                f"but examples have shape {x_batch.shape[1:]}."
            )
        return self

    def transform(self, x: _Any, reverse: bool, *, key: Key, cond: Cond) -> tuple[_Any, Scalar]:
        order = self.axis_order
        if reverse:
            order = tuple(sorted(range(len(order)), key=lambda i: order[i]))
        return jnp.transpose(x, order), _zero(x)


def squeeze(x: Array) -> Array:
    """2x2 space-to-depth on one `(h, w, c)` image; channel index `(i * 2 + j) * c + k`."""
    return space_to_depth(x, 2, 2)


def unsqueeze(x: Array) -> Array:
    """The inverse of [`nux_eqx.bijective.squeeze`][]."""
    return depth_to_space(x, 2, 2)


class Squeeze(AbstractBijection):
    """2x2 space-to-depth: `(h, w, c) -> (h/2, w/2, 4c)`, in NuX's channel order.

    Output channel `(i * 2 + j) * c + k` holds pixel `(2y + i, 2x + j)` of channel `k`.
    `h` and `w` must be even.
    """

    def init(self, x_batch, *, key, cond=None):
        shape = x_batch.shape[1:]
        if len(shape) != 3 or shape[0] % 2 or shape[1] % 2:
            raise ShapeError(
                f"Squeeze needs (h, w, c) images with even h and w, got examples of shape {shape}; "
                "crop or pad the images to an even size."
            )
        return self

    def transform(
        self, x: Image, reverse: bool, *, key: Key, cond: Cond
    ) -> tuple[Float[Array, "h2 w2 c2"], Scalar]:
        return (unsqueeze(x) if reverse else squeeze(x)), _zero(x)


class UnSqueeze(AbstractBijection):
    """2x2 depth-to-space, the inverse of `Squeeze`: `(h, w, c) -> (2h, 2w, c/4)`.

    `c` must be divisible by 4.
    """

    def init(self, x_batch, *, key, cond=None):
        shape = x_batch.shape[1:]
        if len(shape) != 3 or shape[2] % 4:
            raise ShapeError(
                f"UnSqueeze needs (h, w, c) images with c divisible by 4, got examples of shape {shape}."
            )
        return self

    def transform(
        self, x: Image, reverse: bool, *, key: Key, cond: Cond
    ) -> tuple[Float[Array, "h2 w2 c2"], Scalar]:
        return (squeeze(x) if reverse else unsqueeze(x)), _zero(x)
