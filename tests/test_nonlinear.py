"""Tanh, Softplus and SoftmaxPP: derivatives, stability for large inputs, and SoftmaxPP's
log-determinant and normalisation on the simplex."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import gammaln

import nux_eqx as nux


def _init(layer, x):
    return nux.init(layer, x, key=jax.random.key(0))


ELEMENTWISE = [
    # layer, numpy map, numpy log-derivative, reverse-side test points
    (nux.Tanh, np.tanh, lambda v: -2 * np.log(np.cosh(v)), [-0.9, -0.1, 0.5, 0.99]),
    (nux.Softplus, lambda v: np.logaddexp(0, v), lambda v: -np.logaddexp(0, -v), [1e-3, 0.5, 3.0, 40.0]),
]


@pytest.mark.parametrize("cls,f,log_df,z_points", ELEMENTWISE, ids=lambda v: getattr(v, "__name__", ""))
def test_elementwise_values_and_log_det(cls, f, log_df, z_points):
    x = jnp.asarray([[-30.0, -4.0, -0.3, 0.0, 0.7, 5.0, 30.0]])
    flow = _init(cls(), x)
    z, c = flow(x[0])
    np.testing.assert_allclose(z, f(np.asarray(x[0], np.float64)), rtol=1e-6)
    # Stable for large |x| (where 1 - tanh^2 and sigmoid underflow in float32).
    assert np.isfinite(float(c))
    np.testing.assert_allclose(c, np.sum(log_df(np.asarray(x[0], np.float64))), rtol=1e-5)
    # The log-derivative per element, against autodiff where it is representable.
    small = jnp.asarray([[-2.0, 0.3, 1.5]])
    flow_s = _init(cls(), small)
    jac = jax.jacobian(lambda v: flow_s(v)[0])(small[0])
    np.testing.assert_allclose(flow_s(small[0])[1], np.linalg.slogdet(np.asarray(jac))[1], rtol=1e-5)
    # Reverse on the interior of the range; the contribution is the same both ways.
    zin = jnp.asarray(z_points)
    flow = _init(cls(), zin[None])
    xr, cr = flow(zin, True)
    z2, c2 = flow(xr)
    np.testing.assert_allclose(z2, zin, rtol=1e-5)
    np.testing.assert_allclose(cr, c2, rtol=1e-5)


def _dirichlet_logpdf(p_first, alpha):
    """Dirichlet log-density with respect to the Lebesgue measure of the first K - 1
    coordinates (the standard convention)."""
    p = np.concatenate([p_first, 1 - p_first.sum(-1, keepdims=True)], -1)
    return gammaln(alpha.sum()) - gammaln(alpha).sum() + ((alpha - 1) * np.log(p)).sum(-1)


@pytest.mark.parametrize("tau,log_delta", [(0.4, 0.0), (1.0, 0.7)])
def test_softmaxpp_log_det_matches_the_derivation_and_the_jacobian(tau, log_delta):
    x = jax.random.normal(jax.random.key(1), (5, 3))
    flow = _init(nux.SoftmaxPP(tau, log_delta), x)
    with jax.enable_x64(True):
        x64 = jnp.asarray(np.asarray(x, np.float64))
        flow64 = flow  # no parameters: the float64 input makes it run in float64
        for v in x64:
            z, c = flow64(v)
            p = np.concatenate([np.asarray(z), [1 - float(z.sum())]])
            # The derivation: -(K-1) log tau + sum_{k=1}^{K} log p_k.
            np.testing.assert_allclose(c, -3 * math.log(tau) + np.log(p).sum(), rtol=1e-10)
            # The square Jacobian onto the first K - 1 coordinates.
            J = jax.jacobian(lambda u: flow64(u)[0])(v)
            np.testing.assert_allclose(c, np.linalg.slogdet(np.asarray(J))[1], rtol=1e-10)
            # The tall Jacobian onto the full K-vector: larger by the constant 0.5 log K.
            Jt = jax.jacobian(lambda u: jnp.concatenate([flow64(u)[0], 1 - flow64(u)[0].sum(keepdims=True)]))(
                v
            )
            Jt = np.asarray(Jt)
            np.testing.assert_allclose(
                0.5 * np.linalg.slogdet(Jt.T @ Jt)[1], float(c) + 0.5 * math.log(4), rtol=1e-10
            )
            assert np.all(p > 0) and abs(p.sum() - 1) < 1e-12


@pytest.mark.parametrize("alpha", [(1.0, 1.0), (2.0, 0.7)])
def test_softmaxpp_with_a_dirichlet_prior_is_normalised_k2(alpha):
    # K = 2: x in R. Integrate p(x) = Dir(z(x)) |dz/dx| over a wide grid.
    alpha = np.asarray(alpha)
    with jax.enable_x64(True):
        flow = _init(nux.SoftmaxPP(tau=0.5), jnp.zeros((2, 1), jnp.float64))
        xs = jnp.linspace(-15.0, 15.0, 30001, dtype=jnp.float64)[:, None]
        z, c = jax.vmap(flow)(xs)
    log_px = _dirichlet_logpdf(np.asarray(z), alpha) + np.asarray(c)
    total = np.trapezoid(np.exp(log_px), np.asarray(xs[:, 0]))
    assert abs(total - 1) < 1e-4


def test_softmaxpp_with_a_dirichlet_prior_is_normalised_k3():
    alpha = np.asarray([1.5, 2.0, 1.2])
    with jax.enable_x64(True):
        flow = _init(nux.SoftmaxPP(tau=1.0), jnp.zeros((2, 2), jnp.float64))
        g = np.linspace(-25.0, 25.0, 801)
        X = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        z, c = jax.vmap(flow)(jnp.asarray(X))
    px = np.exp(_dirichlet_logpdf(np.asarray(z), alpha) + np.asarray(c)).reshape(801, 801)
    total = np.trapezoid(np.trapezoid(px, g, axis=1), g)
    assert abs(total - 1) < 1e-3


def test_softmaxpp_round_trip_and_range():
    x = 0.5 * jax.random.normal(jax.random.key(2), (6, 4))
    flow = _init(nux.SoftmaxPP(), x)
    z, c = jax.vmap(flow)(x)
    assert np.all(np.asarray(z) > 0) and np.all(np.asarray(z.sum(-1)) < 1)
    xr, cr = jax.vmap(lambda v: flow(v, True))(z)
    np.testing.assert_allclose(xr, x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cr, c, rtol=1e-5, atol=1e-5)


def test_invalid_configurations_are_rejected():
    for tau in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="tau .*> 0"):
            nux.SoftmaxPP(tau=tau)
    with pytest.raises(ValueError, match="log_delta must be finite"):
        nux.SoftmaxPP(log_delta=float("inf"))
    with pytest.raises(nux.ShapeError, match="vectors"):
        nux.init(nux.SoftmaxPP(), jnp.zeros((2, 3, 3)), key=jax.random.key(0))
