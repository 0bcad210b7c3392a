"""Noisy injective flows (NIF) and importance weighting, against closed forms.

The registry (tests/cases_injective.py) runs check_flow on the deterministic mode. Here:
the stochastic terms, and a linear-Gaussian model whose marginal N(b, A Aᵀ + Σ) is known.
"""

import importlib.util
import math
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx.testing import scramble

D, K = 5, 2


def _linear_gaussian(n_samples=8):
    """An initialised importance_weighted(TallAffineDiagCov, UnitGaussianPrior) with set
    parameters, a few points drawn from the model, and their exact log p(x)."""
    kA, kb, kc, kz, kx, k_init = jr.split(jr.key(0), 6)
    A = 0.7 * jr.normal(kA, (D, K))
    b = jr.normal(kb, (D,))
    lc = 0.3 * jr.normal(kc, (D,)) + math.log(0.5)
    iw = nux.importance_weighted(nux.TallAffineDiagCov(K), nux.UnitGaussianPrior(), n_samples)
    iw = nux.init(iw, jnp.zeros((2, D)), key=k_init)
    iw = eqx.tree_at(lambda f: (f.nif.A, f.nif.b, f.nif.log_diag_cov), iw, (A, b, lc))
    xs = jr.normal(kz, (4, K)) @ A.T + b + jnp.exp(0.5 * lc) * jr.normal(kx, (4, D))
    cov = A @ A.T + jnp.diag(jnp.exp(lc))
    exact = jax.vmap(lambda x: jax.scipy.stats.multivariate_normal.logpdf(x, b, cov))(xs)
    return iw, xs, exact, (A, b, lc)


def _many(iw, xs, n, n_keys, seed):
    keys = jr.split(jr.key(seed), n_keys)
    f = eqx.filter_jit(
        lambda iw, xs, keys: jax.vmap(lambda x: jax.vmap(lambda k: iw.estimates(x, k, n_samples=n))(keys))(xs)
    )
    return f(iw, xs, keys)


def test_importance_weighted_gap_shrinks_to_exact_log_px():
    iw, xs, exact, _ = _linear_gaussian()
    n_keys = 4000
    gaps, ses = {}, {}
    for n in (1, 8, 64):
        est = _many(iw, xs, n, n_keys, seed=n)
        gaps[n] = float(jnp.mean(exact - jnp.mean(est.log_px_est, axis=1)))
        ses[n] = float(jnp.sqrt(jnp.mean(jnp.var(est.log_px_est, axis=1)) / (n_keys * xs.shape[0])))
    print("gap exact log p(x) - E[IW estimate] at n=1, 8, 64:", gaps, "standard errors:", ses)
    assert gaps[1] > gaps[8] + 4 * (ses[1] + ses[8])
    assert gaps[8] > gaps[64] + 4 * (ses[8] + ses[64])
    assert -4 * ses[64] < gaps[64] < 0.02
    assert gaps[1] > 0.05  # the case is not trivially tight


def test_single_sample_estimate_is_the_elbo_and_a_lower_bound():
    iw, xs, exact, (A, b, lc) = _linear_gaussian()
    n_keys = 4000
    # the single-sample estimate through a plain Sequential forward pass
    flow = nux.Sequential(iw.nif, nux.UnitGaussianPrior())
    flow = nux.init(flow, xs, key=jr.key(1))
    flow = eqx.tree_at(lambda f: f.layers[0], flow, iw.nif)
    keys = jr.split(jr.key(2), n_keys)
    single = eqx.filter_jit(
        lambda f, xs: jax.vmap(lambda x: jax.vmap(lambda k: nux.log_prob(f, x, key=k))(keys))(xs)
    )(flow, xs)
    mean = jnp.mean(single, axis=1)
    se = jnp.std(single, axis=1) / math.sqrt(n_keys)
    # closed-form ELBO = log p(x) - KL(q(z|x) || p(z|x)), from Gaussian formulas only
    inv_var = jnp.exp(-lc)
    M = (A.T * inv_var) @ A
    P = jnp.eye(K) + M
    elbos = []
    for x, lp in zip(xs, exact):
        t = A.T @ ((x - b) * inv_var)
        mu_q, cov_q = jnp.linalg.solve(M, t), jnp.linalg.inv(M)
        mu_p, cov_p = jnp.linalg.solve(P, t), jnp.linalg.inv(P)
        kl = 0.5 * (
            jnp.trace(P @ cov_q)
            + (mu_p - mu_q) @ P @ (mu_p - mu_q)
            - K
            + jnp.linalg.slogdet(cov_p)[1]
            - jnp.linalg.slogdet(cov_q)[1]
        )
        elbos.append(lp - kl)
    elbos = jnp.stack(elbos)
    assert jnp.all(elbos < exact - 0.01)
    np.testing.assert_array_less(jnp.abs(mean - elbos), 4 * se + 1e-3)
    assert jnp.all(mean + 4 * se < exact)


def test_upper_estimate_divergence_and_conditional_entropy():
    iw, xs, exact, (A, b, lc) = _linear_gaussian()
    est = _many(iw, xs, 64, 1000, seed=5)
    M = (A.T * jnp.exp(-lc)) @ A
    H = 0.5 * (K * math.log(2 * math.pi * math.e) - jnp.linalg.slogdet(jnp.eye(K) + M)[1])
    assert jnp.all(jnp.mean(est.log_px_upper_est, 1) > exact)
    assert jnp.all(jnp.mean(est.log_px_lower, 1) < exact)
    assert jnp.all(est.js_div >= -1e-5)
    np.testing.assert_allclose(jnp.mean(est.conditional_entropy, 1), H, atol=0.05)
    # NuX's objective estimates log p(x) - H[p(z|x)]
    np.testing.assert_allclose(jnp.mean(est.objective, 1), exact - H, atol=0.05)


def _nif_cases():
    k = jr.key(4)
    return {
        "TallAffineDiagCov": (nux.TallAffineDiagCov(2), jr.normal(k, (6, 4))),
        "CouplingTallAffineDiagCov": (
            nux.CouplingTallAffineDiagCov(3, hidden_layer_sizes=(8,)),
            jr.normal(k, (6, 5)),
        ),
        "UpSample": (nux.UpSample((2, 1, 2)), jr.normal(k, (6, 4, 4, 2))),
        "CouplingUpSample": (nux.CouplingUpSample(n_channels=8), jr.normal(k, (6, 4, 4, 2))),
    }


@pytest.mark.parametrize("name", sorted(_nif_cases()))
def test_log_q_is_log_p_minus_log_h(name):
    """NuX's noisy_injective_flow_test: log q(z|x) = log p(x|z) - log h(x), on scrambled
    parameters; the forward pass with the same key returns the same z and log h(x)."""
    layer, x = _nif_cases()[name]
    layer = scramble(nux.init(layer, x, key=jr.key(0)), jr.key(1), scale=0.3)
    keys = jr.split(jr.key(2), x.shape[0])
    keys2 = jr.split(jr.key(3), x.shape[0])

    @eqx.filter_jit
    def run(layer, x):
        terms = jax.vmap(layer.nif_terms)(x, keys)
        z, c = jax.vmap(lambda xi, k: layer(xi, key=k))(x, keys)
        z2, _ = jax.vmap(lambda xi, k: layer(xi, key=k))(x, keys2)
        x_gen, c_gen = jax.vmap(lambda zi, k: layer(zi, True, key=k))(z, keys)
        return terms, z, c, z2, x_gen, c_gen, jax.vmap(layer.nif_terms)(x_gen, keys)

    terms, z, c, z2, x_gen, c_gen, terms_gen = run(layer, x)
    np.testing.assert_allclose(terms.log_qzgx, terms.log_pxgz - terms.log_hx, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(z, terms.z, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(c, terms.log_hx, rtol=1e-6, atol=1e-5)
    # different keys give different samples of q(z|x)
    assert not np.allclose(z2, z)
    # reverse with a key: the forward contribution at the generated (x, z) pair
    assert x_gen.shape == x.shape and jnp.all(jnp.isfinite(c_gen))
    if name in ("TallAffineDiagCov", "UpSample"):  # log h depends on x only
        np.testing.assert_allclose(c_gen, terms_gen.log_hx, rtol=1e-5, atol=1e-4)


def test_log_h_is_the_integral_of_p_x_given_z():
    """log h(x) = log ∫ p(x|z) dz, by Monte Carlo over a broad Gaussian in z."""
    layer, x = _nif_cases()["TallAffineDiagCov"]
    layer = scramble(nux.init(layer, x, key=jr.key(0)), jr.key(1), scale=0.3)
    log_h = layer.nif_terms(x[0], jr.key(0)).log_hx
    z_mean, _ = layer(x[0])
    n = 200_000
    eps = jr.normal(jr.key(5), (n, 2))
    zs = z_mean + 3.0 * eps
    log_prop = jnp.sum(-0.5 * eps**2 - math.log(3.0) - 0.5 * math.log(2 * math.pi), axis=1)
    mean = zs @ layer.A.T + layer.b
    log_p = -0.5 * jnp.sum(
        (x[0] - mean) ** 2 * jnp.exp(-layer.log_diag_cov) + layer.log_diag_cov + math.log(2 * math.pi), axis=1
    )
    mc = jax.nn.logsumexp(log_p - log_prop) - math.log(n)
    np.testing.assert_allclose(mc, log_h, atol=0.02)


def test_upsample_matches_dense_nif_with_the_upsampling_matrix():
    x = jr.normal(jr.key(0), (6, 4, 2, 2))
    up = scramble(nux.init(nux.UpSample((2, 1, 2)), x, key=jr.key(1)), jr.key(2), scale=0.5)
    # the upsampling matrix, column by column
    z_shape = (2, 2, 1)
    A = jax.vmap(lambda e: up(e.reshape(z_shape), True)[0].reshape(-1) - up.b.reshape(-1))(
        jnp.eye(math.prod(z_shape))
    ).T
    dense = nux.init(nux.TallAffineDiagCov(A.shape[1]), x.reshape(6, -1), key=jr.key(3))
    dense = eqx.tree_at(
        lambda f: (f.A, f.b, f.log_diag_cov), dense, (A, up.b.reshape(-1), up.log_diag_cov.reshape(-1))
    )

    @eqx.filter_jit
    def both(up, dense, x):
        key = jr.key(4)
        h_up = jax.vmap(lambda v: up.nif_terms(v, key).log_hx)(x)
        h_dense = jax.vmap(lambda v: dense.nif_terms(v.reshape(-1), key).log_hx)(x)
        return h_up, h_dense, jax.vmap(up)(x), jax.vmap(lambda v: dense(v.reshape(-1)))(x)

    h_up, h_dense, (z_up, c_up), (z_dense, c_dense) = both(up, dense, x)
    np.testing.assert_allclose(h_up, h_dense, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(z_up.reshape(6, -1), z_dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c_up, c_dense, rtol=1e-5, atol=1e-5)


def test_deterministic_mode_is_the_pseudo_inverse():
    layer, x = _nif_cases()["TallAffineDiagCov"]
    layer = scramble(nux.init(layer, x, key=jr.key(0)), jr.key(1), scale=0.3)
    z, c = jax.vmap(layer)(x)
    np.testing.assert_allclose(z, (x - layer.b) @ jnp.linalg.pinv(layer.A).T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(c, -0.5 * jnp.linalg.slogdet(layer.A.T @ layer.A)[1], rtol=1e-5)


def test_importance_weighted_trains_and_samples():
    iw, xs, exact, _ = _linear_gaussian(n_samples=4)
    keys = jr.split(jr.key(0), xs.shape[0])
    params, static = nux.trainable(iw)

    @eqx.filter_jit
    def run(params, xs):
        def loss(p):
            z, c = jax.vmap(lambda x, k: eqx.combine(p, static)(x, key=k))(xs, keys)
            return -jnp.mean(c), (z, c)

        grads, (z, c) = jax.grad(loss, has_aux=True)(params)
        return z, c, grads, nux.sample(eqx.combine(params, static), jr.key(1))

    z, c, grads, (x, log_q) = run(params, xs)
    assert z.shape == (4, K) and jnp.all(jnp.isfinite(c))
    assert all(jnp.all(jnp.isfinite(g)) and jnp.any(g != 0) for g in jax.tree.leaves(grads))
    assert x.shape == (D,) and jnp.isfinite(log_q)
    # a trained NIF and prior can be wrapped afterwards, with its shapes known at once
    wrapped = nux.importance_weighted(iw.nif, iw.prior, n_samples=16)
    assert wrapped.is_initialised and wrapped.in_shape == (D,)
    assert jnp.isfinite(nux.log_prob(wrapped, xs[0], key=jr.key(2)))


def test_errors_are_clear():
    with pytest.raises(nux.ShapeError, match="Flatten"):
        nux.init(nux.TallAffineDiagCov(2), jnp.zeros((3, 4, 4, 1)), key=jr.key(0))
    with pytest.raises(nux.ShapeError, match="at most 4"):
        nux.init(nux.TallAffineDiagCov(5), jnp.zeros((3, 4)), key=jr.key(0))
    with pytest.raises(ValueError, match=">= 2"):
        nux.CouplingTallAffineDiagCov(1)
    with pytest.raises(nux.ShapeError, match="divisible"):
        nux.init(nux.UpSample((3, 1, 1)), jnp.zeros((3, 4, 4, 1)), key=jr.key(0))
    with pytest.raises(nux.ShapeError, match="divisible"):
        nux.init(nux.CouplingUpSample(n_channels=4), jnp.zeros((3, 2, 2, 1)), key=jr.key(0))
    iw, xs, _, _ = _linear_gaussian()
    with pytest.raises(ValueError, match="PRNG key"):
        iw(xs[0])
    with pytest.raises(ValueError, match="PRNG key"):
        iw.nif.nif_terms(xs[0], None)


def test_nif_digits_example_runs(tmp_path):
    path = pathlib.Path(__file__).parents[1] / "examples" / "nif_digits.py"
    spec = importlib.util.spec_from_file_location("nif_digits", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "samples.png"
    result = mod.main(
        ["--steps", "3", "--out", str(out), "--n-test", "16", "--hidden", "8", "--n-couplings", "1"]
    )
    assert out.exists() and out.stat().st_size > 0
    assert all(np.isfinite(v) for v in result.values())
    # on average the importance-weighted estimate is at least the single-sample one
    assert result["iw64"] >= result["elbo"] - 0.05
