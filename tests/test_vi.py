"""Variational inference: `fit_vi` and `importance_log_z` on targets with a known log Z."""

import json
import math
import warnings

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import nux_eqx as nux

LOG_Z = 1.5
MEANS = jnp.array([[-1.0, -0.5], [1.2, 0.8]])
SCALES = jnp.array([0.6, 0.8])
WEIGHTS = jnp.array([0.55, 0.45])


def mixture(x):
    """An unnormalised 2-D mixture of two isotropic Gaussians; its normaliser is exp(LOG_Z)."""
    d = x.shape[0]
    log_comp = (
        -0.5 * jnp.sum((x - MEANS) ** 2, -1) / SCALES**2
        - d * jnp.log(SCALES)
        - 0.5 * d * math.log(2 * math.pi)
        + jnp.log(WEIGHTS)
    )
    return jax.nn.logsumexp(log_comp) + LOG_Z


def gaussian(scale, log_z):
    def log_p(x):
        d = x.size
        return -0.5 * jnp.sum(x**2) / scale**2 - d * math.log(scale) - 0.5 * d * math.log(2 * math.pi) + log_z

    return log_p


def _prior_only(dim=2):
    return nux.init(nux.Sequential(nux.UnitGaussianPrior()), jnp.zeros((2, dim)), key=jr.key(0))


def test_importance_log_z_is_exact_when_the_flow_is_the_target():
    est = nux.train.importance_log_z(_prior_only(), gaussian(1.0, 2.3), jr.key(1), n=500)
    np.testing.assert_allclose(float(est.log_z), 2.3, atol=1e-5)
    np.testing.assert_allclose(float(est.elbo), 2.3, atol=1e-5)
    np.testing.assert_allclose(float(est.ess), 500, rtol=1e-4)
    assert float(est.log_z_stderr) < 1e-2 and est.n == 500


def test_importance_log_z_is_consistent_for_a_mismatched_proposal():
    # proposal N(0, 1), target N(0, 0.7^2) * e^-0.4: bounded weights, ESS < n, ELBO < log Z
    est = nux.train.importance_log_z(_prior_only(), gaussian(0.7, -0.4), jr.key(2), n=20_000, chunk_size=3000)
    assert abs(float(est.log_z) + 0.4) < 4 * float(est.log_z_stderr) + 1e-3
    assert 0.5 * 20_000 < float(est.ess) < 0.95 * 20_000
    assert float(est.elbo) < -0.4 - 0.01
    # the chunking does not change the result
    est2 = nux.train.importance_log_z(
        _prior_only(), gaussian(0.7, -0.4), jr.key(2), n=20_000, chunk_size=20_000
    )
    np.testing.assert_allclose(float(est2.log_z), float(est.log_z), atol=1e-5)


def test_fit_vi_recovers_log_z_of_a_mixture():
    flow, res = nux.train.fit_vi(
        nux.RealNVP(n_layers=4, hidden_layer_sizes=(32, 32)),
        mixture,
        key=jr.key(0),
        steps=300,
        shape=(2,),
        n_samples=128,
        optimizer=optax.adam(3e-3),
        n_importance=100_000,
        progress=False,
    )
    assert res["stop_reason"] == "completed" and res["steps"] == 300 and len(res["elbo"]) == 300
    assert abs(res["log_z"] - LOG_Z) < 0.01, res["log_z"]
    assert res["log_z_stderr"] < 0.004
    assert 0.3 < res["ess_fraction"] <= 1.0 and res["ess"] == pytest.approx(res["ess_fraction"] * 100_000)
    # training raised the ELBO, which stays below log Z
    assert np.mean(res["elbo"][-50:]) > np.mean(res["elbo"][:5]) + 0.3
    assert res["final_elbo"] < LOG_Z
    assert LOG_Z - res["final_elbo"] < 0.2
    json.dumps(res)
    # the returned flow is an ordinary flow: log_prob and sampling agree
    x, log_q = nux.sample(flow, jr.key(3))
    np.testing.assert_allclose(float(nux.log_prob(flow, x)), float(log_q), rtol=1e-4, atol=1e-4)


def test_fit_vi_with_planar_radial_flow_and_an_initialised_flow():
    layers = [nux.Planar(), nux.Radial(), nux.Planar(), nux.Radial()]
    flow = nux.init(nux.Sequential(*layers, nux.UnitGaussianPrior()), jnp.zeros((4, 2)), key=jr.key(0))
    target = gaussian(1.3, 0.7)
    trained, res = nux.train.fit_vi(
        flow,
        target,
        key=jr.key(4),
        steps=20,
        n_samples=32,
        n_importance=2000,
        progress=False,
        steps_per_dispatch=8,
    )
    assert res["steps"] == 20 and len(res["elbo"]) == 20 and np.all(np.isfinite(res["elbo"]))
    assert abs(res["log_z"] - 0.7) < 5 * res["log_z_stderr"] + 0.01
    # the caller's flow was copied, not donated: still usable
    nux.sample(flow, jr.key(5))
    nux.sample(trained, jr.key(5))


def test_fit_vi_stops_on_a_non_finite_elbo():
    def bad(x):  # -inf on half the plane
        return jnp.where(x[0] > 0, -0.5 * jnp.sum(x**2), -jnp.inf)

    flow = nux.init(nux.Sequential(nux.Planar(), nux.UnitGaussianPrior()), jnp.zeros((4, 2)), key=jr.key(0))
    with pytest.warns(RuntimeWarning, match="non-finite at step 1"):
        trained, res = nux.train.fit_vi(flow, bad, key=jr.key(1), steps=5, n_importance=0, progress=False)
    assert res["stop_reason"] == "non_finite" and res["steps"] == 0 and res["log_z"] is None
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(flow)):  # no update was applied
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fit_vi_bad_arguments_say_what_to_do():
    target = gaussian(1.0, 0.0)
    with pytest.raises(ValueError, match="shape=\\(dim,\\)"):
        nux.train.fit_vi(nux.RealNVP(n_layers=1), target, key=jr.key(0), steps=1)
    with pytest.raises(nux.ShapeError, match="to a scalar"):
        nux.train.fit_vi(_prior_only(), lambda x: -0.5 * x**2, key=jr.key(0), steps=1)
    with pytest.raises(TypeError, match="end in a prior"):
        nux.train.fit_vi(nux.Sequential(nux.Planar()), target, key=jr.key(0), steps=1, shape=(2,))
    with pytest.raises(nux.ShapeError, match="initialised for examples of shape"):
        nux.train.fit_vi(_prior_only(), target, key=jr.key(0), steps=1, shape=(3,))
    with pytest.raises(ValueError, match="not initialised"):
        nux.train.importance_log_z(nux.Sequential(nux.UnitGaussianPrior()), target, jr.key(0))
    with pytest.raises(ValueError, match="n \\(the number of samples\\)"):
        nux.train.importance_log_z(_prior_only(), target, jr.key(0), n=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, res = nux.train.fit_vi(
            nux.Sequential(nux.UnitGaussianPrior()), target, key=jr.key(0), steps=0, example=jnp.zeros(2)
        )
    assert res["steps"] == 0 and res["elbo"] == []
