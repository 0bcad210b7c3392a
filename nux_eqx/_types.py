"""Shared jaxtyping aliases for layer signatures."""

from jaxtyping import Array, Float, PRNGKeyArray, PyTree

Scalar = Float[Array, ""]
"""A scalar contribution."""
AnyShape = Float[Array, "*shape"]
"""One example of any shape (elementwise layers)."""
Vector = Float[Array, " dim"]
"""One vector example."""
Image = Float[Array, "h w c"]
"""One channels-last image example."""
Key = PRNGKeyArray | None
Cond = PyTree

__all__ = ["AnyShape", "Cond", "Image", "Key", "Scalar", "Vector"]
