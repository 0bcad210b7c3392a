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


# ---- labels next to conditioning: cond={"label": y, "c": c} ---------------------------

X3 = jr.normal(jr.key(7), (8, 3))
Y8 = jnp.array([0, 1, 2, -1, 0, 1, 2, -1])
C8 = jr.normal(jr.key(8), (8, 2))

CONDITIONAL_LAYERS = {
    "ConditionedCoupling": lambda: nux.ConditionedCoupling(hidden_layer_sizes=(8,)),
    "ConditionalMAF": lambda: nux.ConditionalMAF(hidden_layer_sizes=(8,)),
    "ConditionalMaskedAutoregressiveSpline": lambda: nux.ConditionalMaskedAutoregressiveSpline(
        hidden_layer_sizes=(8,)
    ),
}


@pytest.mark.parametrize("name", sorted(CONDITIONAL_LAYERS))
def test_gmm_label_entry_next_to_conditioning(name):
    """The prior reads cond["label"], the conditional layer reads only the rest."""
    cond = {"label": Y8, "c": C8}
    flow = scramble(
        nux.init(nux.Sequential(CONDITIONAL_LAYERS[name](), nux.GMMPrior(3)), X3, key=jr.key(1), cond=cond),
        jr.key(2),
        0.3,
    )
    layer, prior = flow.layers
    lp = eqx.filter_jit(
        jax.vmap(lambda f, x, y, c: nux.log_prob(f, x, cond={"label": y, "c": c}), (None, 0, 0, 0))
    )(flow, X3, Y8, C8)
    assert np.all(np.isfinite(lp))
    for i in (0, 3):  # a labelled and an unlabelled example
        x, y, c = X3[i], Y8[i], C8[i]
        # the conditional layer does not see the label ...
        z, ld = layer(x, cond={"label": y, "c": c})
        z2, ld2 = layer(x, cond={"label": (y + 1) % 3, "c": c})
        np.testing.assert_array_equal(z, z2)
        np.testing.assert_array_equal(ld, ld2)
        # ... but does see the conditioning
        assert not np.allclose(layer(x, cond={"label": y, "c": c + 1.0})[0], z)
        # the prior reads the label entry: the same as a bare label
        _, lpz = prior(z, cond={"label": y, "c": c})
        assert float(lpz) == pytest.approx(float(prior(z, cond=y)[1]), rel=1e-6)
        assert float(lp[i]) == pytest.approx(float(ld + lpz), rel=1e-5, abs=1e-5)
    # sampling with a label: at temperature 0 the latent is that class's mean
    for y in range(3):
        xs, lq = nux.sample(flow, jr.key(y), cond={"label": jnp.asarray(y), "c": C8[0]}, temperature=0.0)
        z, _ = layer(xs, cond={"label": jnp.asarray(y), "c": C8[0]})
        np.testing.assert_allclose(z, prior.means[y], rtol=1e-4, atol=1e-4)


def test_label_key_and_no_label():
    # another name: the prior reads it; conditional layers read it too (it is not "label")
    cond = {"y": Y8, "c": C8}
    flow = nux.init(
        nux.Sequential(nux.ConditionedCoupling(hidden_layer_sizes=(8,)), nux.GMMPrior(3, label_key="y")),
        X3,
        key=jr.key(1),
        cond=cond,
    )
    layer, prior = flow.layers
    z, _ = layer(X3[0], cond={"y": Y8[0], "c": C8[0]})
    assert not np.allclose(layer(X3[0], cond={"y": Y8[1], "c": C8[0]})[0], z)
    assert float(prior(z, cond={"y": jnp.asarray(2), "c": C8[0]})[1]) == pytest.approx(
        float(prior(z, cond=jnp.asarray(2))[1]), rel=1e-6
    )
    # label_key=None: the prior reads no label, so a bare array cond is the layers' alone
    flow = nux.init(
        nux.Sequential(nux.ConditionedCoupling(hidden_layer_sizes=(8,)), nux.GMMPrior(3, label_key=None)),
        X3,
        key=jr.key(1),
        cond=C8,
    )
    layer, prior = flow.layers
    z, _ = layer(X3[0], cond=C8[0])
    comp = jnp.stack(
        [jnp.sum(jss.norm.logpdf(z, prior.means[k], jnp.exp(prior.log_scales[k]))) for k in range(3)]
    )
    assert float(prior(z, cond=C8[0])[1]) == pytest.approx(
        float(jax.nn.logsumexp(comp) - math.log(3)), rel=1e-5
    )
    # a dict without the label entry is refused, naming the entry and the way out
    with pytest.raises(TypeError, match="entry 'label'.*label_key"):
        nux.init(nux.GMMPrior(3), X3, key=jr.key(0), cond={"y": Y8, "c": C8})
    gmm = nux.init(nux.GMMPrior(3), X3, key=jr.key(0), cond=Y8)
    with pytest.raises(TypeError, match="entry 'label'"):
        gmm(X3[0], cond={"c": C8[0]})
    with pytest.raises(TypeError, match="label_key"):
        nux.GMMPrior(3, label_key=1)


def test_cond_features_leave_the_label_out():
    from nux_eqx.nn import cond_features

    c, y = jnp.arange(3.0), jnp.asarray(2)
    np.testing.assert_array_equal(cond_features({"label": y, "c": c}, (4,)), c)
    np.testing.assert_array_equal(cond_features({"label": y, "c": c, "d": c + 1}, (4,)), jnp.r_[c, c + 1])
    assert cond_features({"label": y}, (4,)) is None
    # at any depth, e.g. the outer cond inside a ChainRuleCond
    got = cond_features(nux.ChainRuleCond(jnp.ones(2), {"label": y, "c": c}), (4,))
    np.testing.assert_array_equal(got, cond_features(nux.ChainRuleCond(jnp.ones(2), {"c": c}), (4,)))
    # images: the label is not broadcast over the pixels either
    img = cond_features({"label": y, "c": c}, (2, 2, 1))
    assert img.shape == (2, 2, 3)
    # other names and bare arrays are read as before
    np.testing.assert_array_equal(cond_features({"y": y, "c": c}, (4,)), jnp.r_[c, 2.0])


def test_uniform_dirichlet_refuses_k_vectors():
    p = jax.nn.softmax(jr.normal(jr.key(0), (8, 4)))  # full K-vectors, K = 4 (NuX's input)
    with pytest.raises(nux.ShapeError, match="full K-vector.*K - 1"):
        nux.init(nux.UniformDirichletPrior(K=4), p, key=jr.key(0))
    with pytest.raises(nux.ShapeError, match="sums to 1.*K - 1"):
        nux.init(nux.UniformDirichletPrior(alpha_scale=2.0), p, key=jr.key(0))
    with pytest.raises(nux.ShapeError, match="size 3"):
        nux.init(nux.UniformDirichletPrior(K=4), p[:, :2], key=jr.key(0))
    with pytest.raises(ValueError, match="K"):
        nux.UniformDirichletPrior(K=1)
    for prior in (nux.UniformDirichletPrior(K=4), nux.UniformDirichletPrior()):
        f = nux.init(prior, p[:, :3], key=jr.key(0))
        assert f.in_shape == (3,)
        assert np.all(np.isfinite(_log_probs(f, p[:, :3])))
        # it reads no label: a dict cond with a label entry changes nothing
        assert float(f(p[0, :3], cond={"label": jnp.asarray(1)})[1]) == float(f(p[0, :3])[1])
    # after SoftmaxPP (K - 1 outputs) in a flow
    flow = nux.init(
        nux.Sequential(nux.SoftmaxPP(), nux.UniformDirichletPrior(K=4)),
        jr.normal(jr.key(1), (8, 3)),
        key=jr.key(0),
    )
    assert np.isfinite(float(nux.log_prob(flow, jnp.zeros(3))))
