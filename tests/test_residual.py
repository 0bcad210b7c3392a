"""ResidualFlow: spectral normalisation (dense and conv operator norms), the Lipschitz
bound, the fixed-point inverse, the Russian-roulette estimator's unbiasedness, the
normalised density, `update_spectral_state`. `check_flow` runs through the registry
(tests/cases_continuous.py)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx.bijective._residual import _SpectralLayer
from nux_eqx.testing import scramble


@pytest.fixture(scope="module")
def res2():
    x = jr.normal(jr.key(0), (8, 2))
    flow = nux.init(nux.ResidualFlow((16, 16)), x, key=jr.key(1))
    return flow, x


def _operator_norm(layer: _SpectralLayer, kernel) -> float:
    """The exact operator norm of the layer's linear map, from its dense matrix."""
    u = layer.u.value
    J = jax.jacobian(lambda v: layer._apply(kernel, v.reshape(u.shape)).reshape(-1))(u.reshape(-1))
    return float(np.linalg.norm(np.asarray(J), 2))


def test_power_iteration_finds_the_operator_norm():
    """Dense and conv: sigma() equals the exact norm of the linear operator (for the conv
    on the example's shape, not of the reshaped kernel), and the normalised layers have
    norm <= coeff."""
    for x in (jr.normal(jr.key(0), (4, 3)), jr.normal(jr.key(0), (4, 4, 4, 2))):
        flow = nux.init(nux.ResidualFlow((8,), n_channels=6, coeff=0.7), x, key=jr.key(1))
        for layer in flow.network.layers:
            exact = _operator_norm(layer, layer.kernel)
            np.testing.assert_allclose(float(layer.sigma()), exact, rtol=1e-3)
            assert _operator_norm(layer, layer.normalised_kernel()) <= 0.7 * (1 + 1e-3)
        assert float(flow.lipschitz_bound()) <= 0.7 ** len(flow.network.layers) * (1 + 1e-3)


def test_update_spectral_state_tracks_changed_weights(res2):
    """After a large change of the weights the per-call estimate from the stale vector is
    off; update_spectral_state (pure, jittable) brings it back to the exact norm."""
    flow, _ = res2
    layer = flow.network.layers[1]
    moved = eqx.tree_at(lambda s: s.kernel, layer, layer.kernel + jr.normal(jr.key(5), layer.kernel.shape))
    exact = _operator_norm(moved, moved.kernel)
    fresh = eqx.filter_jit(nux.update_spectral_state)(moved, 200)
    assert fresh.u.value.shape == moved.u.value.shape
    assert not np.allclose(fresh.u.value, moved.u.value)
    np.testing.assert_allclose(float(fresh.sigma()), exact, rtol=1e-4)
    # only the stored vectors change
    assert jax.tree.structure(fresh) == jax.tree.structure(moved)
    np.testing.assert_array_equal(fresh.kernel, moved.kernel)


def test_fixed_point_inverse_images():
    x = jr.normal(jr.key(0), (3, 4, 4, 2))
    flow = nux.init(nux.ResidualFlow(n_channels=8, coeff=0.97), x, key=jr.key(1))
    flow = scramble(flow, jr.key(2), 0.5)
    z, c = jax.vmap(flow)(x)
    assert float(jnp.max(jnp.abs(z - x))) > 1e-2  # not the identity
    xr, cr = jax.vmap(lambda v: flow(v, True))(z)
    np.testing.assert_allclose(xr, x, atol=2e-5)
    np.testing.assert_allclose(cr, c, atol=1e-5)


def test_russian_roulette_is_unbiased(res2):
    flow, x = res2
    flow = scramble(flow, jr.key(3), 0.5)
    est = nux.StochasticLogDet(flow)
    n = 4000
    keys = jr.split(jr.key(4), n)
    f = eqx.filter_jit(lambda e, x0, ks: jax.vmap(lambda k: e(x0, key=k))(ks))
    for x0 in x[:2]:
        z_e, c_e = f(est, x0, keys)
        _, c = flow(x0)
        se = float(jnp.std(c_e)) / np.sqrt(n)
        assert float(jnp.std(c_e)) > 0
        assert abs(float(jnp.mean(c_e)) - float(c)) < 4 * se + 1e-5, (float(jnp.mean(c_e)), float(c), se)
        np.testing.assert_allclose(z_e[0], flow(x0)[0], atol=1e-6)


def test_density_integrates_to_one(res2):
    flow, _ = res2
    flow = scramble(flow, jr.key(3), 0.5)
    model = nux.Sequential(flow, nux.UnitGaussianPrior())
    model = nux.init(model, jr.normal(jr.key(0), (4, 2)), key=jr.key(1))
    model = eqx.tree_at(lambda m: m.layers[0], model, flow)
    g = jnp.linspace(-7.0, 7.0, 141)
    xx, yy = jnp.meshgrid(g, g)
    pts = jnp.stack([xx.ravel(), yy.ravel()], -1)
    lp = eqx.filter_jit(jax.vmap(lambda f, v: nux.log_prob(f, v), in_axes=(None, 0)))(model, pts)
    total = float(jnp.sum(jnp.exp(lp)) * (g[1] - g[0]) ** 2)
    assert abs(total - 1.0) < 5e-3, total


def test_errors():
    with pytest.raises(ValueError, match="coeff"):
        nux.ResidualFlow(coeff=1.0)
    with pytest.raises(ValueError, match="p must"):
        nux.ResidualFlow(p=1.5)
    with pytest.raises(ValueError, match="max_terms"):
        nux.ResidualFlow(n_exact_terms=5, max_terms=3)
    with pytest.raises(nux.ShapeError, match="vectors"):
        nux.init(nux.ResidualFlow(), jnp.zeros((2, 3, 3)), key=jr.key(0))


def test_russian_roulette_is_unbiased_on_images():
    """The image estimator runs its convolutions as patch matmuls inside its loop (CPU):
    the same map and an unbiased log-determinant."""
    x = jr.normal(jr.key(0), (2, 4, 4, 1))
    flow = nux.init(nux.ResidualFlow(n_channels=4), x, key=jr.key(1))
    flow = scramble(flow, jr.key(3), 0.3)
    est = nux.StochasticLogDet(flow)
    n = 2000
    keys = jr.split(jr.key(4), n)
    f = eqx.filter_jit(lambda e, x0, ks: jax.vmap(lambda k: e(x0, key=k))(ks))
    z_e, c_e = f(est, x[0], keys)
    z, c = flow(x[0])
    se = float(jnp.std(c_e)) / np.sqrt(n)
    assert float(jnp.std(c_e)) > 0
    assert abs(float(jnp.mean(c_e)) - float(c)) < 4 * se + 1e-5, (float(jnp.mean(c_e)), float(c), se)
    np.testing.assert_allclose(z_e[0], z, atol=1e-5)


def test_training_steps_advance_the_power_iteration_vectors():
    """make_step / fit advance every stored power-iteration vector on the new weights after
    each update (NuX's state update), for ResidualFlow and for nn.spectral_norm
    conditioners; without it they stay where init left them while the weights move."""
    import optax

    x = jr.normal(jr.key(0), (64, 2))
    flow = nux.Sequential(
        nux.ResidualFlow((16,)),
        nux.Coupling(hidden_layer_sizes=(8,), network_factory=nux.nn.spectral_norm()),
        nux.UnitGaussianPrior(),
    )
    flow = nux.init(flow, x, key=jr.key(1))
    res = lambda f: f.layers[0].network.layers[0]  # noqa: E731
    sn = lambda f: f.layers[1].network  # noqa: E731
    # weights far from those the stored vectors converged on at init
    flow = eqx.tree_at(lambda f: res(f).kernel, flow, 3 * jr.normal(jr.key(2), res(flow).kernel.shape))
    flow = eqx.tree_at(
        lambda f: sn(f).network.layers[0].weight, flow, 3 * jr.normal(jr.key(3), sn(flow).network.layers[0].weight.shape)
    )
    want_res = res(flow).power_iterate(1)[0]
    want_sn = sn(flow).updated().u[0].get()
    step = nux.train.make_step(optax.sgd(0.0), donate=False)  # weights stay: only the vectors move
    new, _, _ = step(flow, step.init(flow), x[:16])
    assert not np.allclose(res(flow).u.get(), want_res, atol=1e-3)
    np.testing.assert_allclose(res(new).u.get(), want_res, atol=1e-5)
    np.testing.assert_allclose(sn(new).u[0].get(), want_sn, atol=1e-5)
    fitted, _ = nux.train.fit(flow, x, key=jr.key(4), steps=1, batch_size=16, optimizer=optax.sgd(0.0), progress=False)
    np.testing.assert_allclose(res(fitted).u.get(), want_res, atol=1e-5)
