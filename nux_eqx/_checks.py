"""Argument checks shared by the layers, with messages that say what to do."""

from jaxtyping import Array

from ._flow import ShapeError


def positive_int(owner: str, name: str, value) -> int:
    """`int(value)`, refused with a clear message when it is below 1."""
    if int(value) < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value}.")
    return int(value)


def vector_size(owner: str, x_batch: Array, *, out_dim: int | None = None, hint: str = "") -> int:
    """The size `d` of the vector examples of `x_batch`; a batch of other examples, or
    (given `out_dim`) vectors shorter than `out_dim`, is a clear `ShapeError`."""
    shape = tuple(x_batch.shape[1:])
    if len(shape) != 1:
        raise ShapeError(
            f"{owner} takes vectors, got examples of shape {shape}; put `Flatten()` before it{hint}."
        )
    d = shape[0]
    if out_dim is not None and out_dim > d:
        raise ShapeError(
            f"{owner}: out_dim={out_dim} is larger than the input size {d}; it must be at most {d}."
        )
    return d
