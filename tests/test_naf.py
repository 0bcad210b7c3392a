"""The deep sigmoidal transformer (NAF-DSF): log-space evaluation safe for any parameters,
the analytic bisection bracket and the inverse's accuracy, implicit gradients, and its use
as a transformer (sampling through MaskedAutoregressive)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx.testing import scramble


def _dsf(scale, key, K=5, shape=(64,)):
    layer = nux.init(nux.DeepSigmoidal(K=K), jnp.zeros((2, *shape)), key=jr.key(0))
    k1, k2, k3 = jr.split(key, 3)
    return eqx.tree_at(
        lambda s: (s.a_param, s.b, s.w_param),
        layer,
        (
            scale * jr.normal(k1, layer.a_param.shape),
            layer.b + scale * jr.normal(k2, layer.b.shape),
            scale * jr.normal(k3, layer.w_param.shape),
        ),
    )


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_inverse_accuracy(scale):
    # Strongly non-linear parameters (scale 3: slopes from ~0.05 to ~20, offsets +-10) and
    # inputs out to |x| = 60: the analytic bracket always holds the root and 50 halvings
    # reach float32 resolution.
    layer = _dsf(scale, jr.key(1))
    x = jnp.concatenate([jr.normal(jr.key(2), (32,)), 20.0 * jr.normal(jr.key(3), (32,))])
    z, c = jax.jit(lambda v: layer(v))(x)
    xr, cr = jax.jit(lambda v: layer(v, reverse=True))(z)
    err = jnp.abs(xr - x) / (1.0 + jnp.abs(x))
    assert float(jnp.max(err)) < 1e-5, float(jnp.max(err))
    np.testing.assert_allclose(float(cr), float(c), rtol=1e-4)


def test_log_det_matches_derivative():
    layer = _dsf(2.0, jr.key(4), shape=(8,))
    x = jnp.linspace(-6.0, 6.0, 8)
    with jax.enable_x64(True):
        l64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if eqx.is_inexact_array(a) else a, layer)
        x64 = jnp.asarray(x, jnp.float64)
        d = jax.vmap(jax.grad(lambda t, i: l64._forward(t)[0][i]), (None, 0))(x64, jnp.arange(8))
        ref = np.log(np.asarray(jnp.diagonal(d)))
        np.testing.assert_allclose(np.asarray(l64._forward(x64)[1]), ref, rtol=1e-9, atol=1e-9)


def test_any_parameters_stay_finite():
    # Huge and tiny unconstrained parameters: no overflow to inf / nan, slopes >= min_slope.
    layer = _dsf(200.0, jr.key(5), shape=(16,))
    x = jnp.linspace(-1e3, 1e3, 16)
    z, c = layer(x)
    assert bool(jnp.all(jnp.isfinite(z))) and bool(jnp.isfinite(c))
    y = jnp.linspace(-50.0, 50.0, 16)
    xr, cr = layer(y, reverse=True)
    assert bool(jnp.all(jnp.isfinite(xr))) and bool(jnp.isfinite(cr))
    g = jax.grad(lambda m: jnp.sum(m(x)[0]) + m(x)[1])(layer)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))


def test_inverse_gradient_is_implicit():
    layer = _dsf(1.0, jr.key(6), shape=(4,))
    y = jnp.array([-2.0, 0.1, 1.5, 7.0])
    x = layer(y, reverse=True)[0]
    dxdy = jax.vmap(jax.grad(lambda t, i: layer(y.at[i].set(t), reverse=True)[0][i]))(y, jnp.arange(4))
    slope = jnp.exp(layer._forward(x)[1])
    np.testing.assert_allclose(np.asarray(dxdy * slope), 1.0, rtol=1e-4)
    # and in the parameters: d x / d b = -(dy/db) / y'
    gb = jax.grad(lambda m: m(y, reverse=True)[0][0])(layer).b[0]
    dyb = jax.grad(lambda m: m(x)[0][0])(layer).b[0]
    np.testing.assert_allclose(np.asarray(gb), -np.asarray(dyb) / float(slope[0]), rtol=1e-4, atol=1e-6)


def test_maf_sampling_round_trip():
    x = 1.5 * jr.normal(jr.key(7), (32, 3))
    flow = nux.Sequential(
        nux.MaskedAutoregressive(nux.DeepSigmoidal(K=4), hidden_layer_sizes=(16,)), nux.UnitGaussianPrior()
    )
    flow = scramble(nux.init(flow, x, key=jr.key(8)), jr.key(9), 0.3)
    xs, log_q = jax.vmap(lambda k: nux.sample(flow, k))(jr.split(jr.key(10), 8))
    log_p = jax.vmap(lambda v: flow(v)[1])(xs)
    np.testing.assert_allclose(np.asarray(log_q), np.asarray(log_p), rtol=1e-4, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="K"):
        nux.DeepSigmoidal(K=0)
    with pytest.raises(ValueError, match="min_slope"):
        nux.DeepSigmoidal(min_slope=0.0)
