"""Circular rational-quadratic splines: a diffeomorphism of the circle (ends and slopes
match across pi ~ -pi), exact inverse, normalised densities on the torus; `UniformPrior`;
the `torus` toy."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx import data
from nux_eqx.testing import scramble


def _params(key, K=5, batch=()):
    k = jr.split(key, 4)
    return (
        jr.normal(k[0], (*batch, K)),
        jr.normal(k[1], (*batch, K)),
        jr.normal(k[2], (*batch, K)),
        jr.uniform(k[3], batch, minval=-3, maxval=3),
    )


def test_periodic_ends_and_slopes():
    w, h, d, rot = _params(jr.key(0), batch=(16,))
    ends = jnp.stack([jnp.full(16, -math.pi), jnp.full(16, math.pi)])
    z, ld = jax.vmap(lambda e: nux.circular_rational_quadratic_spline(e, w, h, d))(ends)
    np.testing.assert_allclose(z[0], -math.pi, atol=1e-5)
    np.testing.assert_allclose(z[1], math.pi, atol=1e-5)
    np.testing.assert_allclose(ld[0], ld[1], atol=1e-5)  # the same slope at both ends
    assert float(jnp.max(jnp.abs(ld[0]))) > 0.1  # ... which is learned, not fixed to 1
    # With the rotation, both ends map to the same angle.
    zr, _ = jax.vmap(lambda e: nux.circular_rational_quadratic_spline(e, w, h, d, rot))(ends)
    gap = jnp.abs(jnp.mod(zr[1] - zr[0] + math.pi, 2 * math.pi) - math.pi)
    assert float(jnp.max(gap)) < 1e-5


def test_round_trip_and_range():
    w, h, d, rot = _params(jr.key(1), batch=(1000,))
    x = jr.uniform(jr.key(2), (1000,), minval=-math.pi, maxval=math.pi)
    for r in (None, rot):
        z, ld = nux.circular_rational_quadratic_spline(x, w, h, d, r)
        assert bool(jnp.all((z >= -math.pi) & (z < math.pi + 1e-6)))
        xr, ld2 = nux.circular_rational_quadratic_spline(z, w, h, d, r, inverse=True)
        # float32 with random knots: steep bins make x ill-conditioned given z (errors up
        # to ~2e-4); the backward error is at rounding level.
        np.testing.assert_allclose(xr, x, atol=1e-3)
        np.testing.assert_allclose(ld2, ld, atol=1e-3)
        zr, _ = nux.circular_rational_quadratic_spline(xr, w, h, d, r)
        gap = jnp.abs(jnp.mod(zr - z + math.pi, 2 * math.pi) - math.pi)
        assert float(jnp.max(gap)) < 2e-5


def test_zero_parameters_are_identity_and_bad_arguments():
    x = jr.uniform(jr.key(3), (8, 3), minval=-3, maxval=3)
    layer = nux.init(nux.CircularRationalQuadraticSpline(K=4), x, key=jr.key(0))
    z, ld = layer(x[0])
    np.testing.assert_allclose(z, x[0], atol=1e-6)
    np.testing.assert_allclose(ld, 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="K"):
        nux.CircularRationalQuadraticSpline(K=1)
    with pytest.raises(ValueError, match="rotation"):
        nux.CircularRationalQuadraticSpline(rotation="yes")
    with pytest.raises(nux.ShapeError, match="derivatives"):
        nux.circular_rational_quadratic_spline(jnp.zeros(()), jnp.zeros(4), jnp.zeros(4), jnp.zeros(3))


def test_torus_density_integrates_to_one():
    # A scrambled circular coupling flow with a uniform prior is a density on the torus.
    x = jr.uniform(jr.key(4), (16, 2), minval=-3, maxval=3)
    flow = nux.Sequential(
        nux.CircularRationalQuadraticSpline(K=4),
        nux.Coupling(nux.CircularRationalQuadraticSpline(K=4), hidden_layer_sizes=(8,)),
        nux.Reverse(),
        nux.UniformPrior(-math.pi, math.pi),
    )
    flow = scramble(nux.init(flow, x, key=jr.key(5)), jr.key(6), scale=0.5)
    # The scrambled density has sharp peaks (max ~51): a fine midpoint grid, whose error
    # falls as h^2 here (the spline is C^1): 1000 cells a side give 1.0037, 2000 ~1.0009,
    # 3000 1.00001.
    n = 2000
    g = jnp.linspace(-math.pi, math.pi, n + 1)[:-1] + math.pi / n
    grid = jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 2)
    p = jnp.exp(jax.jit(jax.vmap(lambda v: nux.log_prob(flow, v)))(grid))
    np.testing.assert_allclose(float(p.sum() * (2 * math.pi / n) ** 2), 1.0, atol=2e-3)
    xs, log_q = jax.vmap(lambda k: nux.sample(flow, k))(jr.split(jr.key(7), 64))
    assert bool(jnp.all((xs >= -math.pi) & (xs <= math.pi)))
    # float32: in the steepest bins (density ~51 at its peak) the inverse's rounding moves
    # the log-density by up to ~2e-4
    np.testing.assert_allclose(log_q, jax.vmap(lambda v: nux.log_prob(flow, v))(xs), atol=5e-4)


def test_uniform_prior():
    prior = nux.init(nux.UniformPrior(-1.0, 3.0), jnp.zeros((2, 3)), key=jr.key(0))
    _, inside = prior(jnp.array([-1.0, 0.0, 2.9]))
    _, outside = prior(jnp.array([0.0, 3.0, 0.0]))
    np.testing.assert_allclose(inside, -3 * math.log(4.0), rtol=1e-6)
    assert outside == -jnp.inf
    with pytest.raises(ValueError, match="low < high"):
        nux.UniformPrior(1.0, 1.0)


def test_torus_toy():
    s = data.load("torus", n_train=50_000, n_valid=10, n_test=10)
    assert s.train.dtype == np.float32 and s.train.shape == (50_000, 2)
    assert s.train.min() >= -math.pi and s.train.max() < math.pi
    g = np.linspace(-math.pi, math.pi, 401)[:-1]
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    total = np.exp(data.toy_log_prob("torus", grid)).sum() * (2 * math.pi / 400) ** 2
    assert abs(total - 1.0) < 1e-6
    # The exact log-density is the data's: its mean NLL beats a shifted copy.
    nll = -data.toy_log_prob("torus", s.train).mean()
    shifted = np.mod(s.train + 1.0 + math.pi, 2 * math.pi) - math.pi
    assert 2.8 < nll < 2.9 and -data.toy_log_prob("torus", shifted).mean() > nll + 0.5
