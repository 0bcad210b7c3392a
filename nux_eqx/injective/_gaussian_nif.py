"""Closed-form pieces of a Gaussian noisy injective flow (NIF, arXiv 2006.13070).

A Gaussian NIF is `p(x|z) = N(x | A z + b, diag(exp(log_diag_cov)))` with a tall `A`
(`x` of size `D >= k`, the size of `z`). With a flat measure on `z`, the stochastic
inverse `q(z|x) = p(x|z) / h(x)` with `h(x) = ∫ p(x|z) dz` is Gaussian:
`q(z|x) = N(z | mu(x), M^{-1})`, `M = Aᵀ Σ^{-1} A`, `mu(x) = M^{-1} Aᵀ Σ^{-1} (x - b)`, and

    log h(x) = -½ ||x - b - A mu||²_{Σ^{-1}} - ½ Σ log_diag_cov - ½ (D - k) log 2π - ½ log det M.

Two kinds of `A` are implemented here: a dense matrix and nearest-neighbour upsampling
(`M` is diagonal then). Everything acts on ONE example.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray

from .._maths import LOG_2PI, diag_gaussian_log_prob


class NIFTerms(NamedTuple):
    """The likelihood terms of a noisy injective flow at one example.

    Returned by `nif_terms(x, key)` of every NIF layer ([`nux_eqx.TallAffineDiagCov`][],
    [`nux_eqx.CouplingTallAffineDiagCov`][], [`nux_eqx.UpSample`][],
    [`nux_eqx.CouplingUpSample`][]).

    **Fields:**

    - `z`: a sample of the stochastic inverse `z ~ q(z|x)` (what the layer's forward pass
      with the same key returns).
    - `log_hx`: the layer's contribution, `log p(x|z) - log q(z|x)`. For a single Gaussian
      NIF this is `log h(x) = log ∫ p(x|z) dz`, the same for every `z`; for the coupling
      NIFs it is `log h_1(x) + log h_2(x_2; z_1)` and depends on the sampled `z_1`.
    - `log_pxgz`: `log p(x|z)` at the sample.
    - `log_qzgx`: `log q(z|x)` at the sample.

    `log_qzgx == log_pxgz - log_hx` holds exactly (up to rounding); adding the prior's
    `log p(z)` to `log_hx` gives a single-sample estimate of `log p(x)` whose mean is the
    evidence lower bound.
    """

    z: Array
    log_hx: Array
    log_pxgz: Array
    log_qzgx: Array


def add_terms(a: NIFTerms, b: NIFTerms, z: Array) -> NIFTerms:
    """Sum the scalar terms of two NIF stages; `z` is the combined latent."""
    return NIFTerms(z, a.log_hx + b.log_hx, a.log_pxgz + b.log_pxgz, a.log_qzgx + b.log_qzgx)


# --------------------------------------------------------------------------------------
# Dense A: x (D,), z (k,), A (D, k).
# --------------------------------------------------------------------------------------


def _dense_posterior(r: Array, A: Array, log_diag_cov: Array):
    """The Gaussian posterior of `z` given `x - b = r`: its mean `mu`, the Cholesky factor
    `L` of its precision `M = Aᵀ Σ⁻¹ A = L Lᵀ`, and `Σ⁻¹`'s diagonal.

    `M` is never formed: the QR factorisation of the whitened `Σ^{-1/2} A = Q R` gives
    `L = Rᵀ` (signs fixed so its diagonal is positive) and `mu = R⁻¹ Qᵀ Σ^{-1/2} r`, which
    keeps the condition number of `Σ^{-1/2} A` instead of squaring it (a conditioner can
    give variances spanning twenty orders of magnitude)."""
    inv_sd = jnp.exp(-0.5 * log_diag_cov)
    W = A * inv_sd[:, None]
    # Householder QR of a matrix whose rows differ in scale by orders of magnitude is
    # accurate when the rows come largest first (Cox & Higham 1998, row sorting); the
    # order of the rows leaves R (WᵀW = RᵀR) and Qᵀ(W r) unchanged in exact arithmetic.
    order = jnp.argsort(-jnp.sum(W * W, axis=1))
    Q, R = jnp.linalg.qr(W[order])
    sign = jnp.where(jnp.diag(R) < 0, -1.0, 1.0).astype(R.dtype)
    Q, R = Q * sign[None, :], R * sign[:, None]
    mu = jax.scipy.linalg.solve_triangular(R, Q.T @ (r * inv_sd)[order], lower=False)
    return mu, R.T, inv_sd * inv_sd


def _dense_log_hx(r, A, log_diag_cov, mu, L, inv_var):
    d, k = A.shape
    resid = r - A @ mu
    return (
        -0.5 * jnp.sum(resid**2 * inv_var)
        - 0.5 * jnp.sum(log_diag_cov)
        - 0.5 * (d - k) * LOG_2PI
        - jnp.sum(jnp.log(jnp.diag(L)))
    )


def dense_log_hx(x: Array, A: Array, b: Array, log_diag_cov: Array) -> Array:
    """`log h(x)` of `p(x|z) = N(x | A z + b, diag(exp(log_diag_cov)))`."""
    r = x - b
    mu, L, inv_var = _dense_posterior(r, A, log_diag_cov)
    return _dense_log_hx(r, A, log_diag_cov, mu, L, inv_var)


def dense_sample_posterior(x: Array, A: Array, b: Array, log_diag_cov: Array, key: PRNGKeyArray) -> NIFTerms:
    """Sample `z ~ q(z|x)` of the dense Gaussian NIF and return its `NIFTerms`."""
    r = x - b
    mu, L, inv_var = _dense_posterior(r, A, log_diag_cov)
    k = A.shape[1]
    eps = jr.normal(key, (k,), x.dtype)
    # cov(z) = M^{-1} = L^{-T} L^{-1}
    z = mu + jax.scipy.linalg.solve_triangular(L.T, eps, lower=False)
    log_hx = _dense_log_hx(r, A, log_diag_cov, mu, L, inv_var)
    log_pxgz = diag_gaussian_log_prob(x, A @ z + b, 0.5 * log_diag_cov)
    log_qzgx = -0.5 * jnp.sum(eps**2) - 0.5 * k * LOG_2PI + jnp.sum(jnp.log(jnp.diag(L)))
    return NIFTerms(z, log_hx, log_pxgz, log_qzgx)


def dense_pinv(x: Array, A: Array, b: Array) -> tuple[Array, Array]:
    """The exact injective map: `z = (AᵀA)^{-1} Aᵀ (x - b)` and `-½ log det(AᵀA)`, through
    the QR factorisation `A = QR` (`z = R^{-1} Qᵀ (x - b)`), whose error grows with
    `cond(A)` where the normal equations' grows with its square."""
    Q, R = jnp.linalg.qr(A)
    z = jax.scipy.linalg.solve_triangular(R, Q.T @ (x - b), lower=False)
    return z, -jnp.sum(jnp.log(jnp.abs(jnp.diagonal(R))))


# --------------------------------------------------------------------------------------
# Nearest-neighbour upsampling A: z (h, w, c) -> x (h rh, w rw, c rc).
# --------------------------------------------------------------------------------------


def upsample(z: Array, repeats: tuple[int, ...]) -> Array:
    """Nearest-neighbour upsampling: repeat every element `repeats[i]` times along axis `i`."""
    for axis, r in enumerate(repeats):
        if r != 1:
            z = jnp.repeat(z, r, axis=axis)
    return z


def block_sum(x: Array, repeats: tuple[int, ...]) -> Array:
    """`Aᵀ x` for the upsampling `A`: sum over each block of `prod(repeats)` elements."""
    shape = []
    for s, r in zip(x.shape, repeats):
        shape += [s // r, r]
    return x.reshape(shape).sum(axis=tuple(range(1, 2 * len(repeats), 2)))


def _up_posterior(r, repeats, log_diag_cov):
    inv_var = jnp.exp(-log_diag_cov)
    m = block_sum(inv_var, repeats)  # the diagonal of M = Aᵀ Σ^{-1} A
    mu = block_sum(r * inv_var, repeats) / m
    return mu, m, inv_var


def _up_log_hx(r, repeats, log_diag_cov, mu, m, inv_var):
    resid = r - upsample(mu, repeats)
    return (
        -0.5 * jnp.sum(resid**2 * inv_var)
        - 0.5 * jnp.sum(log_diag_cov)
        - 0.5 * (r.size - mu.size) * LOG_2PI
        - 0.5 * jnp.sum(jnp.log(m))
    )


def upsample_log_hx(x: Array, repeats, b: Array, log_diag_cov: Array) -> Array:
    """`log h(x)` of `p(x|z) = N(x | upsample(z) + b, diag(exp(log_diag_cov)))`."""
    r = x - b
    mu, m, inv_var = _up_posterior(r, repeats, log_diag_cov)
    return _up_log_hx(r, repeats, log_diag_cov, mu, m, inv_var)


def upsample_sample_posterior(x: Array, repeats, b: Array, log_diag_cov: Array, key) -> NIFTerms:
    """Sample `z ~ q(z|x)` of the upsampling NIF (a diagonal Gaussian) and its terms."""
    r = x - b
    mu, m, inv_var = _up_posterior(r, repeats, log_diag_cov)
    eps = jr.normal(key, mu.shape, x.dtype)
    z = mu + eps * jax.lax.rsqrt(m)
    log_hx = _up_log_hx(r, repeats, log_diag_cov, mu, m, inv_var)
    log_pxgz = diag_gaussian_log_prob(x, upsample(z, repeats) + b, 0.5 * log_diag_cov)
    log_qzgx = -0.5 * jnp.sum(eps**2) - 0.5 * eps.size * LOG_2PI + 0.5 * jnp.sum(jnp.log(m))
    return NIFTerms(z, log_hx, log_pxgz, log_qzgx)


def upsample_pinv(x: Array, repeats, b: Array) -> tuple[Array, Array]:
    """The exact injective map: the block mean of `x - b`, and `-½ log det(AᵀA)`."""
    n = math.prod(repeats)
    z = block_sum(x - b, repeats) / n
    return z, jnp.asarray(-0.5 * z.size * math.log(n), x.dtype)


def tall_half_logdet(generator, z: Array) -> Array:
    """`½ log det(JᵀJ)` of the Jacobian `J` of `generator` (z -> x) at `z`, by forward mode.

    Costs `z.size` Jacobian-vector products and a `z.size`-square determinant: used for the
    deterministic (exact injective) mode of the coupling NIFs."""
    flat = z.reshape(-1)
    J = jax.jacfwd(lambda v: generator(v.reshape(z.shape)).reshape(-1))(flat)
    return half_logdet_gram(J)


def half_logdet_gram(J: Array) -> Array:
    """`½ log det(JᵀJ)` for a tall `J`, as `Σ log|R_ii|` of its QR factorisation: the
    error grows with `cond(J)`, where forming `JᵀJ` squares it (a scrambled coupling NIF
    with `cond(J)` ~ 1e2-1e3 lost 1-2 % of its float32 contribution that way)."""
    R = jnp.linalg.qr(J, mode="r")
    return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(R))))


def bounded_log_cov(log_cov: Array) -> Array:
    """Clip a conditioner's log-variance to `±log(finfo.max) / 4` (about ±22 in float32:
    variances in [3e-10, 4e9]) so that the Gaussian terms, which take `exp(±log_cov)` and
    its square, stay finite for any network output (a scrambled or diverging conditioner
    can output hundreds). Inside the range the value and its gradient are unchanged."""
    bound = 0.25 * math.log(float(jnp.finfo(log_cov.dtype).max))
    return jnp.clip(log_cov, -bound, bound)
