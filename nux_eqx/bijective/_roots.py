"""Root finding shared by the layers whose inverse has no closed form (`DeepSigmoidal`,
`BlockAutoregressiveNetwork`, `Planar`, `LogisticMixtureCDF`): bisection on a bracket known
to hold the root, and the implicit-function gradient of the root found."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array


def bisect(fn: Callable[[Array], Array], y: Array, lo: Array, hi: Array, n_steps: int) -> tuple[Array, Array]:
    """Bisection for an increasing elementwise `fn` with `fn(lo) <= y <= fn(hi)`: a fixed
    number of halvings (`jax.lax.fori_loop`, so it works under `jit` and `vmap`). Returns
    the final bracket `(lo, hi)`, of width `(hi - lo) 2^-n_steps` (or adjacent floats)."""

    def body(_, c):
        a, b = c
        m = 0.5 * (a + b)
        below = fn(m) < y
        return jnp.where(below, m, a), jnp.where(below, b, m)

    return jax.lax.fori_loop(0, n_steps, body, (lo, hi))


def implicit_root(x_root: Array, residual: Array, slope: Array) -> Array:
    """The value `x_root` with the implicit-function gradient of a root of
    `fn(x; theta) = y`: `x_root + (c - stop_gradient(c))`, `c = -residual / slope`, where
    `residual = fn(stop_gradient(x_root)) - y` carries the gradient in `theta` and `y` and
    `slope` is `fn'` (stop-gradiented). The value is `x_root` exactly (bisection is not
    differentiated through); the gradient is `-(dfn/dtheta) / fn'`."""
    c = -residual / jax.lax.stop_gradient(slope)
    return x_root + (c - jax.lax.stop_gradient(c))
