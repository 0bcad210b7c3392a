"""The small shared maths of the layers, in one place: Gaussian log-densities,
space-to-depth, random rotations, and running a function over a batch with one PRNG key
per example."""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray, PyTree

LOG_2PI = math.log(2 * math.pi)

# --------------------------------------------------------------------------------------
# Gaussian log-densities.
# --------------------------------------------------------------------------------------


def std_normal_log_prob(z: Array) -> Array:
    """`log N(z; 0, I)`, summed over every element of `z`."""
    return -0.5 * jnp.sum(z**2) - 0.5 * z.size * LOG_2PI


def diag_gaussian_log_prob(x: Array, mean: Array, log_scale: Array) -> Array:
    """`log N(x; mean, diag(exp(2 log_scale)))`, summed over the trailing `x.ndim` axes.

    `mean` and `log_scale` broadcast against `x` and may carry leading axes (one per
    mixture component, say); the result has those leading axes. For a log-variance
    `log_var`, pass `log_scale = 0.5 * log_var`."""
    eps = (x - mean) * jnp.exp(-log_scale)
    axes = tuple(range(eps.ndim - x.ndim, eps.ndim))
    return jnp.sum(-0.5 * eps**2 - log_scale, axis=axes) - 0.5 * x.size * LOG_2PI


# --------------------------------------------------------------------------------------
# Space-to-depth.
# --------------------------------------------------------------------------------------


def space_to_depth(x: Array, kh: int = 2, kw: int = 2, dh: int = 1, dw: int = 1) -> Array:
    """`(h, w, c) -> (h/kh, w/kw, kh*kw*c)` on one image: patches of `kh x kw` pixels spaced
    `(dh, dw)` apart (NuX's dilated squeeze; `1, 1` is the plain 2x2 squeeze). Output
    channel `(i * kw + j) * c + k` holds pixel `(i, j)` of the patch, channel `k` (NuX's
    order). Row `r = a kh dh + i dh + b` (block `a`, patch row `i`, offset `b < dh`) goes
    to row `a dh + b` of the output."""
    h, w, c = x.shape
    x = x.reshape(h // (kh * dh), kh, dh, w // (kw * dw), kw, dw, c)
    x = x.transpose(0, 2, 3, 5, 1, 4, 6)  # (a, b, a', b', i, j, k)
    return x.reshape(h // kh, w // kw, kh * kw * c)


def depth_to_space(x: Array, kh: int = 2, kw: int = 2, dh: int = 1, dw: int = 1) -> Array:
    """The inverse of `space_to_depth`: `(h, w, kh*kw*c) -> (h*kh, w*kw, c)`."""
    hp, wp, d = x.shape
    c = d // (kh * kw)
    x = x.reshape(hp // dh, dh, wp // dw, dw, kh, kw, c)
    x = x.transpose(0, 4, 1, 2, 5, 3, 6)  # (a, i, b, a', j, b', k)
    return x.reshape(hp * kh, wp * kw, c)


# --------------------------------------------------------------------------------------
# Random rotations.
# --------------------------------------------------------------------------------------


def random_orthogonal(key: PRNGKeyArray, n: int, k: int | None = None, dtype: Any = None) -> Array:
    """A Haar-random `n x k` matrix with orthonormal columns (`k = n`: an orthogonal
    matrix): the QR factor of a Gaussian matrix, with the signs fixed so that the
    distribution is uniform."""
    k = n if k is None else k
    q, r = jnp.linalg.qr(jr.normal(key, (n, k), dtype))
    return q * jnp.sign(jnp.diag(r))


def initial_matrix(kind: str, key: PRNGKeyArray, n: int, dtype: Any = None) -> Array:
    """The starting `n x n` weight of a dense linear layer: `"identity"` or `"rotation"`
    (a Haar-random orthogonal matrix)."""
    if kind == "identity":
        return jnp.eye(n, dtype=dtype)
    return random_orthogonal(key, n, dtype=dtype)


# --------------------------------------------------------------------------------------
# One key per example.
# --------------------------------------------------------------------------------------


def split_key(key: PRNGKeyArray | None, n: int) -> tuple[PRNGKeyArray | None, ...]:
    """`n` keys, one per child or step of a container; `n` times `None` when `key` is
    `None`."""
    return (None,) * n if key is None else tuple(jr.split(key, n))


def batch_keys(key: PRNGKeyArray | None, n: int) -> PRNGKeyArray | None:
    """One key per example of a batch of `n`, stacked along axis 0 (for `keyed_vmap`), or
    `None` when `key` is `None`."""
    return None if key is None else jr.split(key, n)


def keyed_vmap(
    fn: Callable[[Array, PRNGKeyArray | None, PyTree], Any],
    xs: Array,
    keys: PRNGKeyArray | None,
    cond: PyTree = None,
) -> Any:
    """`jax.vmap(fn)(xs, keys, cond)` over a batch, where `keys` (one per example) and
    `cond` (batched on every leaf) may each be `None`: `fn(x, key, cond)` then receives
    `None`."""
    key_axis = None if keys is None else 0
    cond_axis = None if cond is None else 0
    return jax.vmap(fn, in_axes=(0, key_axis, cond_axis))(xs, keys, cond)
