"""The priors of `nux_eqx/priors/_more.py`: closed forms, grid normalisation, temperature,
`GMMPrior`'s labels and `predict`."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jss
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx.testing import scramble


def _init(prior, x_batch, cond=None, scrambled=True, seed=0):
    flow = nux.init(prior, x_batch, key=jr.key(seed), cond=cond)
    return scramble(flow, jr.key(seed + 1), 0.3) if scrambled else flow


@eqx.filter_jit
def _log_probs(flow, xs, cond=None):
    return jax.vmap(lambda x: flow(x, cond=cond)[1])(xs)


def _grid(lo, hi, n, dim):
    h = (hi - lo) / n
    t = lo + h * (jnp.arange(n) + 0.5)  # midpoints
    if dim == 1:
        return t[:, None], h
    a, b = jnp.meshgrid(t, t, indexing="ij")
    return jnp.stack([a.reshape(-1), b.reshape(-1)], -1), h**dim


def _grid_integral(flow, lo, hi, n, dim, cond=None):
    pts, vol = _grid(lo, hi, n, dim)
    return float(jnp.sum(jnp.exp(_log_probs(flow, pts, cond))) * vol)


V2 = jr.normal(jr.key(5), (16, 2))

# (prior, data, grid lo, grid hi, points per axis, dimensions)
GRID_CASES = {
    "DiagGaussianPrior": (lambda: nux.DiagGaussianPrior(), V2, -12.0, 12.0, 600, 2),
    "MixtureGaussianPrior": (lambda: nux.MixtureGaussianPrior(K=3), V2, -12.0, 12.0, 600, 2),
    "AffineGaussianPriorFullCov": (lambda: nux.AffineGaussianPriorFullCov(1), V2, -14.0, 14.0, 600, 2),
    "GMMPrior": (lambda: nux.GMMPrior(3), V2, -12.0, 12.0, 600, 2),
    "LogisticPrior": (lambda: nux.LogisticPrior(), V2, -40.0, 40.0, 800, 2),
    "StudentTPrior-1d": (lambda: nux.StudentTPrior(df=4.0), V2[:, :1], -3000.0, 3000.0, 600_000, 1),
    "UniformDirichletPrior": (
        lambda: nux.UniformDirichletPrior(),
        jnp.full((4, 2), 0.25),
        0.0,
        1.0,
        1000,
        2,
    ),
    "UniformDirichletPrior-alpha": (
        lambda: nux.UniformDirichletPrior(alpha_scale=3.0),
        jnp.full((4, 2), 0.25),
        0.0,
        1.0,
        1000,
        2,
    ),
    "UniformDirichletPrior-1d": (
        lambda: nux.UniformDirichletPrior(alpha_scale=2.5),
        jnp.full((4, 1), 0.25),
        0.0,
        1.0,
        100_000,
        1,
    ),
}


@pytest.mark.parametrize("name", sorted(GRID_CASES))
def test_grid_integral_is_one(name):
    make, x, lo, hi, n, dim = GRID_CASES[name]
    flow = _init(make(), x)
    total = _grid_integral(flow, lo, hi, n, dim)
    # the Dirichlet's density jumps at the simplex boundary: midpoint error O(step)
    assert total == pytest.approx(1.0, abs=1e-2 if "Dirichlet" in name and dim == 2 else 2e-3)


def test_closed_forms():
    x = jr.normal(jr.key(0), (8, 3)) * 2
    # DiagGaussianPrior
    f = _init(nux.DiagGaussianPrior(), x)
    ref = jnp.sum(jss.norm.logpdf(x, f.mean, jnp.exp(f.log_scale)), -1)
    np.testing.assert_allclose(_log_probs(f, x), ref, rtol=1e-5, atol=1e-5)
    # LogisticPrior, StudentTPrior
    f = _init(nux.LogisticPrior(), x)
    np.testing.assert_allclose(_log_probs(f, x), jnp.sum(jss.logistic.logpdf(x), -1), rtol=1e-5, atol=1e-5)
    f = _init(nux.StudentTPrior(df=3.0), x)
    np.testing.assert_allclose(_log_probs(f, x), jnp.sum(jss.t.logpdf(x, 3.0), -1), rtol=1e-5, atol=1e-5)
    # MixtureGaussianPrior
    f = _init(nux.MixtureGaussianPrior(K=4), x)
    comp = jnp.stack(
        [jnp.sum(jss.norm.logpdf(x, f.means[k], jnp.exp(f.log_scales[k])), -1) for k in range(4)], -1
    )
    ref = jax.nn.logsumexp(comp + jax.nn.log_softmax(f.logits), -1)
    np.testing.assert_allclose(_log_probs(f, x), ref, rtol=1e-5, atol=1e-5)
    # UniformDirichletPrior: against jax.scipy's Dirichlet on the full simplex point
    p = jr.dirichlet(jr.key(1), jnp.ones(4), (8,))
    for a in (1.0, 2.5):
        f = _init(nux.UniformDirichletPrior(alpha_scale=a), p[:, :3])
        ref = jax.vmap(lambda q, a=a: jss.dirichlet.logpdf(q, jnp.full(4, a)))(p)
        np.testing.assert_allclose(_log_probs(f, p[:, :3]), ref, rtol=1e-4, atol=1e-4)
    assert float(f(jnp.array([0.5, 0.6, 0.1]))[1]) == -math.inf  # outside the simplex
    assert float(f(jnp.array([-0.1, 0.2, 0.1]))[1]) == -math.inf


def test_full_cov_matches_multivariate_normal():
    x = jr.normal(jr.key(0), (8, 4))
    f = _init(nux.AffineGaussianPriorFullCov(out_dim=2), x)
    L = f.cholesky()
    assert np.allclose(L, np.tril(L)) and np.all(np.diag(L) > 0)
    cov = f.A @ f.A.T + L @ L.T
    assert not np.allclose(cov - np.diag(np.diag(cov)), 0)  # really a full covariance
    z, lp = jax.vmap(f)(x)
    np.testing.assert_allclose(lp, jss.multivariate_normal.logpdf(x, jnp.zeros(4), cov), rtol=1e-4, atol=1e-4)
    # forward returns the posterior mean of z: A^T (A A^T + L L^T)^-1 x
    np.testing.assert_allclose(z, x @ jnp.linalg.solve(cov, f.A), rtol=1e-4, atol=1e-4)
    # samples have the model's covariance (tempered by T^2); log_q is the model density
    xs, lq = jax.vmap(lambda k: f.sample_and_log_prob(k, temperature=0.5))(jr.split(jr.key(3), 40000))
    np.testing.assert_allclose(jnp.cov(xs.T), 0.25 * cov, atol=0.05 * float(jnp.max(jnp.abs(cov))))
    np.testing.assert_allclose(
        lq, jss.multivariate_normal.logpdf(xs, jnp.zeros(4), cov), rtol=1e-4, atol=1e-4
    )


def test_full_cov_init_errors():
    with pytest.raises(nux.ShapeError, match="at most 3"):
        nux.init(nux.AffineGaussianPriorFullCov(4), jnp.zeros((2, 3)), key=jr.key(0))
    with pytest.raises(nux.ShapeError, match="Flatten"):
        nux.init(nux.AffineGaussianPriorFullCov(1), jnp.zeros((2, 2, 2, 1)), key=jr.key(0))
    with pytest.raises(ValueError, match="out_dim"):
        nux.AffineGaussianPriorFullCov(0)


@pytest.mark.parametrize(
    "make, scale_of",
    [
        (lambda: nux.DiagGaussianPrior(), 1.0),
        (lambda: nux.LogisticPrior(), math.pi / math.sqrt(3)),
        (lambda: nux.StudentTPrior(df=6.0), math.sqrt(6.0 / 4.0)),
    ],
)
def test_temperature_scales_the_noise(make, scale_of):
    f = _init(make(), jnp.zeros((2, 3)), scrambled=False)
    for t in (0.5, 1.0):
        xs, lq = jax.vmap(lambda k, t=t: f.sample_and_log_prob(k, temperature=t))(jr.split(jr.key(1), 40000))
        assert float(jnp.std(xs)) == pytest.approx(t * scale_of, rel=0.05)
        # log_q is the untempered model's density at the sample
        np.testing.assert_allclose(lq, _log_probs(f, xs), rtol=1e-5, atol=1e-5)


def test_mixture_temperature_zero_gives_the_means():
    f = _init(nux.MixtureGaussianPrior(K=3), jnp.zeros((2, 2)))
    xs, _ = jax.vmap(lambda k: f.sample_and_log_prob(k, temperature=0.0))(jr.split(jr.key(1), 64))
    d = jnp.min(jnp.sum((xs[:, None] - f.means[None]) ** 2, -1), -1)
    assert float(jnp.max(d)) < 1e-10


def test_dirichlet_temperature_and_sampling():
    f = _init(nux.UniformDirichletPrior(alpha_scale=3.0), jnp.full((2, 2), 0.2))
    ks = jr.split(jr.key(2), 20000)
    xs1, _ = jax.vmap(lambda k: f.sample_and_log_prob(k))(ks)
    xs0, lq = jax.vmap(lambda k: f.sample_and_log_prob(k, temperature=0.3))(ks)
    assert np.allclose(jnp.mean(xs1, 0), 1 / 3, atol=0.01)
    assert float(jnp.std(xs0)) < 0.5 * float(jnp.std(xs1))  # tempered towards the mode
    assert np.all(np.isfinite(lq))
    u = _init(nux.UniformDirichletPrior(), jnp.full((2, 2), 0.2))
    xu, lu = jax.vmap(lambda k: u.sample_and_log_prob(k, temperature=0.3))(ks)
    assert np.all((xu > 0) & (jnp.sum(xu, -1, keepdims=True) < 1))
    np.testing.assert_allclose(lu, math.log(2.0), rtol=1e-6)  # (K-1)! = 2 for K = 3
    with pytest.raises(nux.ShapeError, match="K - 1"):
        nux.init(nux.UniformDirichletPrior(), jnp.zeros((2, 2, 2)), key=jr.key(0))


# ---- GMMPrior -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gmm():
    x = jr.normal(jr.key(0), (8, 2))
    return _init(nux.GMMPrior(n_classes=3), x, cond=jnp.array([0, 1, 2, -1, 0, 1, 2, -1]))


def test_gmm_labelled_is_the_joint_with_minus_log_k(gmm):
    x = jr.normal(jr.key(1), (32, 2)) * 2
    comp = jnp.stack(
        [jnp.sum(jss.norm.logpdf(x, gmm.means[k], jnp.exp(gmm.log_scales[k])), -1) for k in range(3)], -1
    )
    for y in range(3):
        np.testing.assert_allclose(
            _log_probs(gmm, x, jnp.asarray(y)), comp[:, y] - math.log(3), rtol=1e-5, atol=1e-5
        )
    marginal = jax.nn.logsumexp(comp, -1) - math.log(3)
    np.testing.assert_allclose(_log_probs(gmm, x), marginal, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_log_probs(gmm, x, jnp.asarray(-1)), marginal, rtol=1e-5, atol=1e-5)
    # log p(x, y) <= log p(x), and the joint sums over labels to the marginal
    joint = jnp.stack([_log_probs(gmm, x, jnp.asarray(y)) for y in range(3)], -1)
    assert np.all(joint <= marginal[:, None] + 1e-6)
    np.testing.assert_allclose(jax.nn.logsumexp(joint, -1), marginal, rtol=1e-5, atol=1e-5)


def test_gmm_joint_integrates_to_one_over_x_and_y(gmm):
    per_label = [_grid_integral(gmm, -12.0, 12.0, 600, 2, jnp.asarray(y)) for y in range(3)]
    np.testing.assert_allclose(per_label, 1 / 3, atol=1e-3)  # p(y) = 1/K
    assert sum(per_label) == pytest.approx(1.0, abs=2e-3)


def test_gmm_mixed_batch_semi_supervised(gmm):
    x = jr.normal(jr.key(2), (4, 2))
    y = jnp.array([0, -1, 2, -1])
    lp = jax.vmap(lambda xi, yi: gmm(xi, cond=yi)[1])(x, y)
    ref = jnp.array([_log_probs(gmm, x[i : i + 1], y[i])[0] for i in range(4)])
    np.testing.assert_allclose(lp, ref, rtol=1e-6)
    np.testing.assert_allclose(lp[1], _log_probs(gmm, x[1:2])[0], rtol=1e-6)


def test_gmm_predict_and_labelled_sampling(gmm):
    x = jr.normal(jr.key(3), (5, 2))
    post, label = jax.vmap(gmm.predict)(x)
    np.testing.assert_allclose(jnp.sum(post, -1), 1.0, rtol=1e-6)
    joint = jnp.stack([_log_probs(gmm, x, jnp.asarray(y)) for y in range(3)], -1)
    np.testing.assert_allclose(post, jax.nn.softmax(joint, -1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(label, jnp.argmax(joint, -1))
    # a labelled sample at temperature 0 is that class's mean, classified as that class
    for y in range(3):
        z, lq = gmm.sample_and_log_prob(jr.key(y), cond=jnp.asarray(y), temperature=0.0)
        np.testing.assert_allclose(z, gmm.means[y], rtol=1e-6)
        assert int(gmm.predict(z)[1]) == y
        assert float(lq) == pytest.approx(float(gmm(z, cond=jnp.asarray(y))[1]), rel=1e-6)
    with pytest.raises(nux.ShapeError, match="one example"):
        gmm.predict(x)


def test_gmm_label_errors(gmm):
    x = jnp.zeros(2)
    with pytest.raises(nux.ShapeError, match="integer scalar"):
        gmm(x, cond=jnp.array([0, 1]))
    with pytest.raises(TypeError, match="integer dtype"):
        gmm(x, cond=jnp.asarray(1.0))
    with pytest.raises(TypeError, match="integer scalar array"):
        gmm(x, cond={"y": 1})
    for bad in (3, -2):
        with pytest.raises(Exception, match="label out of range"):
            gmm(x, cond=jnp.asarray(bad))
        with pytest.raises(Exception, match="label out of range"):
            eqx.filter_jit(lambda f, y: f(x, cond=y))(gmm, jnp.asarray(bad))
        with pytest.raises(Exception, match="label out of range"):
            jax.vmap(lambda y: gmm(x, cond=y)[1])(jnp.array([0, bad]))
    with pytest.raises(nux.ShapeError, match="one label per example"):
        nux.init(nux.GMMPrior(2), jnp.zeros((4, 2)), key=jr.key(0), cond=jnp.zeros(4))


def test_priors_end_a_flow_and_sample():
    x = jr.normal(jr.key(0), (16, 4))
    sample = eqx.filter_jit(lambda f, k, c: nux.sample(f, k, cond=c, temperature=0.7))
    log_prob = eqx.filter_jit(lambda f, x, c: nux.log_prob(f, x, cond=c))
    for prior, cond in [
        (nux.MixtureGaussianPrior(K=2), None),
        (nux.StudentTPrior(df=4.0), None),
        (nux.GMMPrior(3), jnp.asarray(1)),
    ]:
        flow = nux.Sequential(nux.ActNorm(), nux.Reverse(), prior)
        cb = None if cond is None else jnp.full((16,), cond)
        flow = scramble(nux.init(flow, x, key=jr.key(1), cond=cb), jr.key(2))
        xs, lq = sample(flow, jr.key(3), cond)
        assert xs.shape == (4,)
        assert float(lq) == pytest.approx(float(log_prob(flow, xs, cond)), rel=1e-4, abs=1e-4)
