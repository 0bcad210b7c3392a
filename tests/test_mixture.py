"""Flow++'s logistic-mixture CDF transformer: the accuracy of its bisection inverse (the
numbers its docstring states), finiteness for wild parameters, implicit gradients, and
the Flow++ model and its conditioner."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx.bijective._mixture import logistic_mixture_logit


def _params(dtype, n=2000, K=8, spread=(1.0, 1.0, 0.5)):
    k = jr.split(jr.key(0), 3)
    return tuple((jr.normal(kk, (n, K)) * s).astype(dtype) for kk, s in zip(k, spread))


def _round_trip(dtype, n_bisection, R=5.0, spread=(1.0, 1.0, 0.5)):
    p = _params(dtype, spread=spread)
    x = jnp.linspace(-R, R, 2000, dtype=dtype)
    y, ld = logistic_mixture_logit(x, *p)
    inv = jax.jit(lambda y: logistic_mixture_logit(y, *p, inverse=True, n_bisection=n_bisection))
    xr, ld2 = inv(y)
    yr, _ = logistic_mixture_logit(xr, *p)
    return (
        float(jnp.max(jnp.abs(xr - x))),
        float(jnp.max(jnp.abs(yr - y) / (1 + jnp.abs(y)))),
        float(jnp.max(jnp.abs(ld2 - ld))),
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_inverse_accuracy_vs_iterations(dtype):
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        err = {n: _round_trip(dt, n) for n in (5, 10, 20, 40)}
        x_tol, y_tol = (1e-5, 1e-6) if dtype == "float32" else (1e-13, 1e-14)
        # The documented accuracy at the default 40 steps...
        assert err[40][0] < x_tol and err[40][1] < y_tol and err[40][2] < 100 * x_tol
        # ... is reached by bisection, not by luck: 5 steps are far off.
        assert err[5][0] > 1e3 * err[40][0]
        assert err[10][0] >= err[20][0] >= 0.5 * err[40][0]
        if dtype == "float64":
            assert err[20][0] < 1e-9
        # Wild parameters: the backward error stays at rounding level.
        _, y_res, _ = _round_trip(dt, 40, R=20.0, spread=(3.0, 3.0, 2.0))
        assert y_res < (1e-6 if dtype == "float32" else 1e-14)


def test_bracket_contains_root_in_the_tails():
    # Components far apart and of very different widths; targets deep in both tails and
    # on the flat stretch between components (g' ~ 2e-4 at x in [-1, 0]: float32 cannot
    # resolve x there from y, so this runs in float64).
    with jax.enable_x64(True):
        logits = jnp.array([0.0, -5.0, 3.0])
        means = jnp.array([-30.0, 0.0, 40.0])
        log_scales = jnp.array([-4.0, 2.0, 0.5])
        x = jnp.array([-200.0, -31.0, -1.0, 0.0, 39.0, 300.0])
        y, _ = logistic_mixture_logit(x, logits, means, log_scales)
        xr, _ = logistic_mixture_logit(y, logits, means, log_scales, inverse=True)
        np.testing.assert_allclose(xr, x, rtol=1e-10, atol=1e-9)


def test_forward_finite_for_any_parameters():
    layer = nux.init(nux.LogisticMixtureCDF(K=3), jnp.zeros((2, 5)), key=jr.key(0))
    wild = jax.tree.map(lambda a: a + jnp.asarray([[1e4], [-1e4]])[0] * jnp.sign(a + 0.5), layer)
    for f in (layer, wild):
        for v in (jnp.array([-1e6, -50.0, 0.0, 50.0, 1e6]), jnp.zeros(5)):
            z, ld = f(v)
            assert bool(jnp.all(jnp.isfinite(z))) and bool(jnp.isfinite(ld))
            g = jax.grad(lambda fl, v=v: jnp.sum(fl(v)[0]) + fl(v)[1])(f)
            assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))


def test_inverse_gradients_are_implicit():
    p = tuple(a[0] for a in _params(jnp.float32, n=1, K=4))
    y = jnp.float32(0.7)
    dx_dy = jax.grad(lambda y: logistic_mixture_logit(y, *p, inverse=True)[0])(y)
    x, log_dg = logistic_mixture_logit(y, *p, inverse=True)
    np.testing.assert_allclose(dx_dy, jnp.exp(-log_dg), rtol=1e-4)
    # d x / d means = -(dg/dmeans) / g'(x)
    dx_dm = jax.grad(lambda m: logistic_mixture_logit(y, p[0], m, p[2], inverse=True)[0])(p[1])
    dg_dm = jax.grad(lambda m: logistic_mixture_logit(x, p[0], m, p[2])[0])(p[1])
    np.testing.assert_allclose(dx_dm, -dg_dm * jnp.exp(-log_dg), rtol=1e-3, atol=1e-6)


def test_k1_starts_at_identity_and_bad_arguments():
    x = jr.normal(jr.key(1), (4, 3))
    layer = nux.init(nux.LogisticMixtureCDF(K=1), x, key=jr.key(0))
    z, ld = layer(x[0])
    np.testing.assert_allclose(z, x[0], atol=1e-6)
    np.testing.assert_allclose(ld, 0.0, atol=1e-6)
    for bad in (dict(K=0), dict(K=2.0), dict(scale="tanh"), dict(n_bisection=0)):
        with pytest.raises(ValueError, match="LogisticMixtureCDF"):
            nux.LogisticMixtureCDF(**bad)


def test_sampling_through_a_mixture_coupling_jit_vmap():
    x = jr.normal(jr.key(0), (8, 4, 4, 1))
    flow = nux.Sequential(
        nux.Coupling(
            nux.LogisticMixtureCDF(K=2),
            mask="checkerboard",
            network_factory=nux.nn.GatedResNetFactory(n_channels=4, n_blocks=1, zero_init=False),
        ),
        nux.UnitGaussianPrior(),
    )
    flow = nux.init(flow, x, key=jr.key(1))
    xs, log_q = jax.jit(jax.vmap(lambda k: nux.sample(flow, k)))(jr.split(jr.key(2), 5))
    lp = jax.vmap(lambda v: nux.log_prob(flow, v))(xs)
    np.testing.assert_allclose(log_q, lp, rtol=1e-4, atol=1e-4)


def test_gated_resnet_factory_refuses_vectors():
    with pytest.raises(nux.ShapeError, match="images"):
        nux.init(nux.Coupling(network_factory=nux.nn.GatedResNetFactory()), jnp.zeros((4, 6)), key=jr.key(0))
    with pytest.raises(ValueError, match="n_blocks"):
        nux.nn.GatedResNetFactory(n_blocks=0)
