"""Dense linear bijections on vectors: `AffineDense`, `AffineLDU`, `AffineSVD`,
`Householder` and the `Affine` dispatcher (NuX's `nux/flows/bijective/affine.py`)."""

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, Float

from .._flow import AbstractBijection, AbstractFlow, ShapeError
from .._maths import random_orthogonal
from .._types import Cond, Key, Scalar, Vector

# --------------------------------------------------------------------------------------
# Helpers shared with `_conv_linear.py`.
# --------------------------------------------------------------------------------------


def ldu_init(key, n: int, dtype) -> tuple[Array, Array, Array]:
    """`(L, log_d, U)` of an LDU layer near the identity: small random strict triangles
    and `log_d = 0`."""
    kl, ku = jr.split(key)
    m = n_off_diagonal(n)
    return 0.01 * jr.normal(kl, (m,), dtype), jnp.zeros((n,), dtype), 0.01 * jr.normal(ku, (m,), dtype)


def n_off_diagonal(n: int) -> int:
    return n * (n - 1) // 2


def unit_lower(flat: Array, n: int) -> Array:
    """Unit-lower-triangular `n x n` matrix; `flat` fills the strict lower triangle in
    row-major order (`numpy.tril_indices(n, -1)`)."""
    rows, cols = np.tril_indices(n, -1)
    return jnp.eye(n, dtype=flat.dtype).at[rows, cols].set(flat)


def unit_upper(flat: Array, n: int) -> Array:
    """Unit-upper-triangular `n x n` matrix; `flat` fills the strict upper triangle in
    row-major order (`numpy.triu_indices(n, 1)`)."""
    rows, cols = np.triu_indices(n, 1)
    return jnp.eye(n, dtype=flat.dtype).at[rows, cols].set(flat)


def ldu_apply(L_flat: Array, log_d: Array, U_flat: Array, X: Array, reverse: bool) -> Array:
    """`L diag(exp(log_d)) U X` (or its inverse, by triangular solves) on columns of `X`."""
    n = log_d.shape[0]
    L, U = unit_lower(L_flat, n), unit_upper(U_flat, n)
    if not reverse:
        return L @ (jnp.exp(log_d)[:, None] * (U @ X))
    Y = jsl.solve_triangular(L, X, lower=True, unit_diagonal=True)
    Y = jnp.exp(-log_d)[:, None] * Y
    return jsl.solve_triangular(U, Y, lower=False, unit_diagonal=True)


def _householder_apply(vs: Array, x: Array, transpose: bool) -> Array:
    """Apply `Q = H(v_0) H(v_1) ... H(v_{n-1})` (or `Q^T` when `transpose`) to `x`, where
    `H(v) = I - 2 v v^T / (v^T v)` and `vs` holds the `v_k` as rows."""

    def reflect(y, v):
        return y - (2 * jnp.dot(v, y) / jnp.dot(v, v)) * v, None

    # Q x applies the last reflection first; Q^T x applies the first one first.
    y, _ = lax.scan(reflect, x, vs, reverse=not transpose)
    return y


def check_vectors(name: str, x_batch: Array) -> int:
    if x_batch.ndim != 2:
        raise ShapeError(
            f"{name} acts on vectors, got examples of shape {tuple(x_batch.shape[1:])}; "
            "put `Flatten()` in front of it, or use a 1x1-convolution layer for images."
        )
    return int(x_batch.shape[1])


def _check_n_householders(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(
            f"{name}: n_householders must be an integer >= 1 (the number of Householder "
            f"reflections), got {n!r}."
        )
    return int(n)


# --------------------------------------------------------------------------------------
# Layers.
# --------------------------------------------------------------------------------------


class AffineDense(AbstractBijection):
    """A dense affine map `z = W x + b` on vectors.

    `W` starts as a random orthogonal matrix (NuX whitened a Glorot-normal matrix, which
    gives the same distribution) and `b` at zero. The contribution is `log|det W|`;
    reverse solves `W x = z - b`.
    """

    W: Float[Array, "dim dim"] | None = None
    b: Float[Array, " dim"] | None = None

    def __init__(self):
        self.W = self.b = None

    def init(self, x_batch, *, key, cond=None):
        d = check_vectors("AffineDense", x_batch)
        W = random_orthogonal(key, d, dtype=x_batch.dtype)
        b = jnp.zeros((d,), x_batch.dtype)
        return eqx.tree_at(lambda s: (s.W, s.b), self, (W, b), is_leaf=lambda v: v is None)

    def transform(self, x: Vector, reverse: bool, *, key: Key, cond: Cond) -> tuple[Vector, Scalar]:
        z = jnp.linalg.solve(self.W, x - self.b) if reverse else self.W @ x + self.b
        return z, jnp.linalg.slogdet(self.W)[1]


class AffineLDU(AbstractBijection):
    """A dense linear map in LDU form: `z = L diag(exp(log_d)) U x` on vectors.

    `L` is unit-lower-triangular and `U` unit-upper-triangular; their strict triangles are
    the flat parameters `L` and `U` (row-major, as `numpy.tril_indices(dim, -1)` and
    `numpy.triu_indices(dim, 1)` list them). The contribution is `sum(log_d)`; reverse
    runs two triangular solves. As in NuX, `L` and `U` start at `N(0, 0.01^2)` entries and
    `log_d` at zero (close to the identity).
    """

    L: Float[Array, " n_off"] | None = None
    log_d: Float[Array, " dim"] | None = None
    U: Float[Array, " n_off"] | None = None

    def init(self, x_batch, *, key, cond=None):
        d = check_vectors("AffineLDU", x_batch)
        return eqx.tree_at(
            lambda s: (s.L, s.log_d, s.U), self, ldu_init(key, d, x_batch.dtype), is_leaf=lambda v: v is None
        )

    def transform(self, x: Vector, reverse: bool, *, key: Key, cond: Cond) -> tuple[Vector, Scalar]:
        z = ldu_apply(self.L, self.log_d, self.U, x[:, None], reverse)[:, 0]
        return z, jnp.sum(self.log_d)


class AffineSVD(AbstractBijection):
    """A dense affine map in SVD form: `z = U diag(exp(log_s)) V^T x + b` on vectors.

    `U` and `V` are orthogonal, each the product of `n_householders` Householder
    reflections `H(v) = I - 2 v v^T / (v^T v)`: `U = H(u_0) ... H(u_{n-1})` with the
    `u_k` the rows of the parameter `U`, and likewise `V`. The contribution is
    `sum(log_s)`; reverse is `V diag(exp(-log_s)) U^T (z - b)`. With `n_householders >=
    dim`, `U` and `V` reach every orthogonal matrix of determinant
    `(-1) ** n_householders`, so every matrix of positive determinant is reachable. The
    rows of `U` and `V` start as standard normal draws, `log_s` and `b` at zero.

    **Arguments:**

    - `n_householders`: the number of reflections in each of `U` and `V` (an int >= 1).
    """

    U: Float[Array, "n dim"] | None = None
    log_s: Float[Array, " dim"] | None = None
    V: Float[Array, "n dim"] | None = None
    b: Float[Array, " dim"] | None = None
    n_householders: int = eqx.field(static=True, default=1)

    def __init__(self, n_householders: int):
        self.n_householders = _check_n_householders("AffineSVD", n_householders)
        self.U = self.log_s = self.V = self.b = None

    def init(self, x_batch, *, key, cond=None):
        d = check_vectors("AffineSVD", x_batch)
        ku, kv = jr.split(key)
        n = self.n_householders
        U = jr.normal(ku, (n, d), x_batch.dtype)
        V = jr.normal(kv, (n, d), x_batch.dtype)
        zeros = jnp.zeros((d,), x_batch.dtype)
        return eqx.tree_at(
            lambda s: (s.U, s.log_s, s.V, s.b), self, (U, zeros, V, zeros), is_leaf=lambda v: v is None
        )

    def transform(self, x: Vector, reverse: bool, *, key: Key, cond: Cond) -> tuple[Vector, Scalar]:
        if reverse:
            y = _householder_apply(self.U, x - self.b, transpose=True)
            z = _householder_apply(self.V, jnp.exp(-self.log_s) * y, transpose=False)
        else:
            y = jnp.exp(self.log_s) * _householder_apply(self.V, x, transpose=True)
            z = _householder_apply(self.U, y, transpose=False) + self.b
        return z, jnp.sum(self.log_s)


class Householder(AbstractBijection):
    """An orthogonal map on vectors made of Householder reflections:
    `z = H(v_0) H(v_1) ... H(v_{n-1}) x` with `H(v) = I - 2 v v^T / (v^T v)`.

    The contribution is 0 (an orthogonal map preserves volume); reverse applies the
    reflections in the opposite order. The vectors `v_k` (rows of `vectors`) start as
    standard normal draws. Use it as a learned rotation between other layers: on its own
    it cannot change a Gaussian's likelihood.

    **Arguments:**

    - `n_householders`: the number of reflections (an int >= 1; default 1).
    """

    vectors: Float[Array, "n dim"] | None = None
    n_householders: int = eqx.field(static=True, default=1)

    def __init__(self, n_householders: int = 1):
        self.n_householders = _check_n_householders("Householder", n_householders)
        self.vectors = None

    def init(self, x_batch, *, key, cond=None):
        d = check_vectors("Householder", x_batch)
        vs = jr.normal(key, (self.n_householders, d), x_batch.dtype)
        return eqx.tree_at(lambda s: s.vectors, self, vs, is_leaf=lambda v: v is None)

    def transform(self, x: Vector, reverse: bool, *, key: Key, cond: Cond) -> tuple[Vector, Scalar]:
        z = _householder_apply(self.vectors, x, transpose=reverse)
        return z, jnp.zeros((), x.dtype)


_AFFINE_MODES = {"dense": AffineDense, "ldu": AffineLDU, "svd": AffineSVD}


def Affine(*args, mode: str = "dense", **kwargs) -> AbstractFlow:
    """NuX's `Affine`: build a dense linear bijection on vectors by `mode`.

    **Arguments:**

    - `*args`, `**kwargs`: passed to the chosen class (`AffineSVD` needs
      `n_householders`).
    - `mode`: `"dense"` ([`nux_eqx.AffineDense`][]), `"LDU"` ([`nux_eqx.AffineLDU`][]) or
      `"SVD"` ([`nux_eqx.AffineSVD`][]); case-insensitive.

    **Returns:**

    An instance of the chosen class.
    """
    cls = _AFFINE_MODES.get(mode.lower()) if isinstance(mode, str) else None
    if cls is None:
        raise ValueError(f"Affine: mode must be one of 'dense', 'LDU' or 'SVD', got {mode!r}.")
    return cls(*args, **kwargs)


Affine.__nux_builder__ = True
