"""Reliability: numerics at the edges, float64, clear errors on bad input, checkpoints that
refuse what they cannot load, determinism, and a long run that holds its memory.

Everything here uses small fixed shapes; the wide or long versions are marked `slow`.
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import nux_eqx as nux
from nux_eqx.testing import scramble

ROOT = pathlib.Path(__file__).parents[1]
RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)
SMALL = dict(hidden_layer_sizes=(16, 16))


def finite(*trees) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for t in trees for leaf in jax.tree.leaves(t))


def close(a, b, tol) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= tol * (1.0 + np.abs(b))))


@eqx.filter_jit
def round_trip(flow, x):
    z, c = jax.vmap(flow)(x)
    xr, cr = jax.vmap(lambda v: flow(v, True))(z)
    return z, c, xr, cr


init = eqx.filter_jit(nux.init)


@eqx.filter_jit
def loss_grads(flow, x, keys=None):
    """Gradients of the mean negative log-likelihood with respect to the trainable leaves."""
    params, static = nux.trainable(flow)

    def loss(p):
        f = eqx.combine(p, static)
        return -jnp.mean(
            jax.vmap(lambda v, k: f(v, key=k)[1], in_axes=(0, None if keys is None else 0))(x, keys)
        )

    return jax.grad(loss)(params)


@pytest.fixture(scope="module")
def digits():
    return nux.data.digits()


# ======================================================================================
# Numerics, layer by layer.
# ======================================================================================


def test_logit_with_lmbda_is_finite_at_exactly_0_and_1():
    f = nux.init(nux.Logit(lmbda=0.05), jnp.full((2, 4), 0.5), key=jr.key(0))
    x = jnp.array([0.0, 1.0, 0.5, 1e-30])
    z, c = f(x)
    assert finite(z, c)
    assert jnp.allclose(z[:2], jnp.array([-1.0, 1.0]) * jnp.log(0.95 / 0.05), atol=1e-5)
    xr, cr = f(z, True)
    assert jnp.allclose(xr, x, atol=1e-6) and jnp.allclose(cr, c, atol=1e-5)
    grad = jax.grad(lambda v: f(v)[1] - 0.5 * jnp.sum(f(v)[0] ** 2))(x)
    assert finite(grad)
    # in reverse, latents far out in the tails land at the ends of the image of R,
    # (-lmbda / (1 - 2 lmbda), (1 - lmbda) / (1 - 2 lmbda)), with a finite contribution
    xr, cr = f(jnp.array([-1e4, 1e4, 80.0, -80.0]), True)
    lo, hi = -0.05 / 0.9, 0.95 / 0.9
    assert finite(xr, cr) and bool(jnp.all((xr >= lo - 1e-6) & (xr <= hi + 1e-6)))


def test_logit_without_lmbda_gives_documented_inf_and_check_finite_names_it():
    f = nux.init(nux.Logit(lmbda=0.0), jnp.full((2, 3), 0.5), key=jr.key(0))
    x = jnp.array([0.0, 1.0, 0.5])
    z, c = f(x)  # the exact logit: the ends are at infinity (documented, not an error)
    assert z[0] == -jnp.inf and z[1] == jnp.inf and z[2] == 0.0 and c == jnp.inf
    flow = nux.init(
        nux.Sequential(nux.Logit(lmbda=0.0), nux.UnitGaussianPrior()), jnp.full((2, 3), 0.5), key=jr.key(0)
    )
    with nux.check_finite():
        ok = eqx.filter_jit(lambda f, v: f(v))(flow, jnp.array([0.2, 0.5, 0.7]))  # no false alarm
        assert finite(ok)
        with pytest.raises(RUNTIME_ERRORS, match="Logit produced NaN or inf"):
            eqx.filter_jit(lambda f, v: f(v))(flow, x)
        with pytest.raises(RUNTIME_ERRORS, match="Logit produced NaN or inf"):
            jax.jit(jax.vmap(flow))(x[None])  # plain jax.jit and vmap too


def test_actnorm_on_zero_variance_digit_pixels(digits):
    x = jnp.asarray(digits.train[:256].reshape(256, -1))  # (256, 64): border pixels are constant 0
    constant = np.asarray(x.std(0)) == 0
    assert constant.sum() >= 2  # the case this test is about
    flow = init(
        nux.Sequential(nux.ActNorm(), nux.Coupling(**SMALL), nux.UnitGaussianPrior()), x, key=jr.key(0)
    )
    actnorm = flow.layers[0]
    assert bool(jnp.all(actnorm.log_s[constant] == 0))  # scale 1 where there is no spread
    z, c, xr, cr = round_trip(flow, x)
    assert finite(z, c, xr, cr) and close(xr, x, 1e-5)
    # test digits light up pixels that were constant in the training batch: still finite
    xt = jnp.asarray(digits.test[:256].reshape(256, -1))  # same batch size: no recompilation
    _, ct, _, _ = round_trip(flow, xt)
    assert finite(ct)
    assert finite(loss_grads(flow, x))


def test_actnorm_on_a_constant_image_channel():
    x = jr.normal(jr.key(0), (8, 4, 4, 3))
    x = x.at[..., 1].set(0.25)  # one channel with exactly zero variance
    x = x.at[..., 2].multiply(1e-9)  # one with a float32-noise-sized spread
    f = nux.init(nux.ActNorm(), x, key=jr.key(1))
    z, c, xr, cr = round_trip(f, x)
    assert finite(z, c, xr, cr) and close(xr, x, 1e-5)
    assert float(f.log_s[1]) == 0.0 and float(f.log_s[2]) == 0.0
    g = loss_grads(f, x)
    assert finite(g.b, g.log_s)


def _with_singular_value(W, s_min):
    U, S, Vt = jnp.linalg.svd(W)
    return U @ jnp.diag(S.at[-1].set(s_min)) @ Vt


def test_nearly_singular_one_by_one_conv_stays_finite():
    x = jr.normal(jr.key(0), (6, 4, 4, 3))
    f = nux.init(nux.OneByOneConv(), x, key=jr.key(1))
    for s_min in (1e-3, 1e-6):
        g = eqx.tree_at(lambda m: m.W, f, _with_singular_value(f.W, s_min))
        z, c, xr, cr = round_trip(g, x)
        assert finite(z, c, xr, cr)
        expect = 16 * jnp.linalg.slogdet(g.W)[1]
        assert jnp.allclose(c, expect, rtol=1e-5) and jnp.allclose(cr, c)
        if s_min == 1e-3:  # condition number 1e3: float32 still round-trips well
            assert close(xr, x, 1e-3)


def test_exactly_singular_one_by_one_conv_is_caught_by_check_finite():
    x = jr.normal(jr.key(0), (6, 4, 4, 3))
    f = nux.init(nux.OneByOneConv(init="identity"), x, key=jr.key(1))
    g = eqx.tree_at(lambda m: m.W, f, f.W.at[0, 0].set(0.0))  # a zero row: singular
    flow = nux.init(nux.Sequential(nux.ActNorm(), g, nux.UnitGaussianPrior()), x, key=jr.key(2))
    flow = eqx.tree_at(lambda s: s.layers[1].W, flow, g.W)
    with nux.check_finite():
        with pytest.raises(RUNTIME_ERRORS, match="OneByOneConv produced (a )?NaN or inf"):
            eqx.filter_jit(lambda f, v: jax.vmap(f)(v))(flow, x)


def test_one_by_one_conv_lu_with_tiny_scale():
    x = jr.normal(jr.key(0), (6, 4, 4, 3))
    f = nux.init(nux.OneByOneConvLU(), x, key=jr.key(1))
    g = eqx.tree_at(lambda m: m.log_s, f, f.log_s.at[0].set(-8.0))  # singular value ~3e-4
    z, c, xr, cr = round_trip(g, x)
    assert finite(z, c, xr, cr) and jnp.allclose(cr, c) and close(xr, x, 1e-2)
    assert jnp.allclose(c, 16 * jnp.linalg.slogdet(g.weight())[1], rtol=1e-4)
    # a scale that underflows the inverse is an inf, and check_finite says which layer
    h = eqx.tree_at(lambda m: m.log_s, f, f.log_s.at[0].set(-100.0))
    with nux.check_finite():
        with pytest.raises(RUNTIME_ERRORS, match="OneByOneConvLU produced NaN or inf"):
            eqx.filter_jit(lambda f, v: jax.vmap(lambda u: f(u, True))(v))(h, x * 1e-30 + 1.0)


@pytest.mark.parametrize("image", [False, True], ids=["vector", "image-checkerboard"])
def test_affine_coupling_extreme_scales_stay_finite(image):
    if image:
        x = jr.normal(jr.key(0), (6, 4, 4, 1))
        layer = nux.Coupling(n_channels=4, mask="checkerboard")
        n_transformed = 4 * 4 // 2
    else:
        x = jr.normal(jr.key(0), (6, 6))
        layer = nux.Coupling(**SMALL)
        n_transformed = 3
    f = nux.init(layer, x, key=jr.key(1))
    huge = scramble(f, jr.key(2), scale=100.0)  # network outputs of order 1e4 and more
    for s in (1.0, 1e3, 1e6, 1e12, 1e30):
        z, c, xr, cr = round_trip(huge, s * x)
        assert finite(z, c, xr, cr), s
        # log_s = tanh(.) is bounded, so the contribution is too
        assert bool(jnp.all(jnp.abs(c) <= n_transformed + 1e-3)) and jnp.allclose(cr, c)
    assert finite(loss_grads(huge, 1e6 * x))


@pytest.mark.parametrize("name", ["RationalQuadraticSpline", "NeuralSpline"])
def test_splines_far_outside_the_bound_are_the_identity(name):
    make = {
        "RationalQuadraticSpline": lambda: nux.RationalQuadraticSpline(K=4, B=3.0),
        "NeuralSpline": lambda: nux.NeuralSpline(K=4, B=3.0, hidden_layer_sizes=(8,)),
    }[name]
    f = scramble(nux.init(make(), jr.normal(jr.key(0), (6, 4)), key=jr.key(1)), jr.key(2), 0.5)
    outside = jnp.array([[10.0, -10.0, 1e4, -1e4], [1e30, -1e30, 3.5, -3.5], [3.0, -3.0, 3.0, -3.0]])
    z, c, xr, cr = round_trip(f, outside)
    assert finite(z, c, xr, cr)
    assert jnp.array_equal(z[:2], outside[:2]) and jnp.all(c[:2] == 0)  # identity tails
    assert jnp.allclose(z[2], outside[2], atol=1e-5) and jnp.allclose(xr, outside, rtol=1e-6, atol=1e-5)
    grad = eqx.filter_jit(lambda f, x: jax.vmap(jax.grad(lambda v: f(v)[1] + jnp.sum(f(v)[0])))(x))(
        f, outside
    )
    assert finite(grad, loss_grads(f, outside))


# ---- sampling temperatures -----------------------------------------------------------


@eqx.filter_jit
def _samples(flow, keys, temperature):
    x, log_q = jax.vmap(lambda k: nux.sample(flow, k, temperature=temperature))(keys)
    return x, log_q


@pytest.fixture(scope="module")
def glow(digits):
    x = jnp.asarray(digits.train[:32])
    flow = init(nux.MultiscaleGlow(2, 2, 16, dequantize=17), x, key=jr.key(0))
    return scramble(flow, jr.key(1), 0.05), x


def test_glow_samples_at_temperatures_0_half_and_1(glow):
    flow, _ = glow
    keys = jr.split(jr.key(2), 8)
    for t in (0.0, 0.5, 1.0):  # an array: one compilation for every temperature
        x, log_q = _samples(flow, keys, jnp.asarray(t))
        assert x.shape == (8, 8, 8, 1) and finite(x, log_q), t
        assert bool(jnp.all((x >= 0) & (x <= 16) & (x == jnp.round(x))))  # integer levels


@eqx.filter_jit
def _log_probs(flow, x):
    return jax.vmap(lambda v: nux.log_prob(flow, v))(x)


def test_realnvp_samples_at_temperatures_0_half_and_1():
    x = jnp.asarray(nux.data.toy("8gaussians", n_train=256, n_valid=0, n_test=0).train)
    flow = init(nux.RealNVP(2, (16, 16)), x, key=jr.key(0))
    flow = scramble(flow, jr.key(1), 0.1)
    keys = jr.split(jr.key(2), 64)
    for t in (0.0, 0.5, 1.0):
        xs, log_q = _samples(flow, keys, jnp.asarray(t))
        assert xs.shape == (64, 2) and finite(xs, log_q), t
        if t == 0.0:  # every key gives the prior's mode
            assert jnp.allclose(xs, xs[0], atol=1e-5)
        lp = _log_probs(flow, xs)
        assert jnp.allclose(lp, log_q, atol=1e-3, rtol=1e-4)  # the untempered density


@eqx.filter_jit
def _glow_round_trip(flow, x, keys):
    """Round trip of a dequantised Glow's continuous body, `y = logit(dequantised x)`."""
    deq, logit, body = flow.layers
    u = jax.vmap(lambda v, k: deq(v, key=k)[0])(x, keys)
    y = jax.vmap(lambda v: logit(v)[0])(u)
    z, c = jax.vmap(body)(y)
    yr, cr = jax.vmap(lambda v: body(v, True))(z)
    x_back = jax.vmap(lambda v: flow(v, True)[0])(z)
    return y, c, yr, cr, x_back


def test_glow_float32_round_trip(glow):
    flow, x = glow
    y, c, yr, cr, x_back = _glow_round_trip(flow, x, jr.split(jr.key(3), x.shape[0]))
    assert close(yr, y, 1e-4) and close(cr, c, 1e-4)
    assert float(jnp.mean(x_back == x)) > 0.999  # the whole flow gives back the integer levels


# ---- float64 -------------------------------------------------------------------------


def _vector_flow():
    return nux.Sequential(
        nux.ActNorm(),
        nux.AffineLDU(),
        nux.AffineDense(),
        nux.Coupling(hidden_layer_sizes=(8,)),
        nux.RationalQuadraticSpline(K=4),
        nux.NeuralSpline(K=4, hidden_layer_sizes=(8,)),
        nux.LeakyReLU(0.5),
        nux.Scale(2.0),
        nux.ChainRule(nux.UnitGaussianPrior(), nux.ConditionalGaussianPrior(hidden_layer_sizes=(8,))),
    )


def _image_flow():
    return nux.Sequential(
        nux.UniformDequantization(scale=17.0),
        nux.Logit(),
        nux.Squeeze(),
        nux.ActNorm(),
        nux.OneByOneConv(),
        nux.OneByOneConvLU(),
        nux.Coupling(n_channels=4, mask="checkerboard", parity=1),
        nux.UnSqueeze(),
        nux.Factored(nux.UnitGaussianPrior(), nux.UnitGaussianPrior(), axis=0),
    )


@eqx.filter_jit
def _everything(flow, x, keys):
    z, c = jax.vmap(lambda v, k: flow(v, key=k))(x, keys)
    xr, cr = jax.vmap(lambda v: flow(v, True))(z)
    xs, lq = jax.vmap(lambda k: nux.sample(flow, k))(keys)
    return z, c, xr, cr, xs, lq


@pytest.mark.parametrize("kind", ["vector", "image"])
def test_float64_end_to_end(kind):
    with jax.enable_x64(True):
        if kind == "vector":
            x = jr.normal(jr.key(0), (8, 4), jnp.float64)
            flow = _vector_flow()
        else:
            x = jnp.floor(jr.uniform(jr.key(0), (8, 4, 4, 1), jnp.float64) * 17)
            flow = _image_flow()
        flow = scramble(init(flow, x, key=jr.key(1)), jr.key(2), 0.05)
        dtypes = {leaf.dtype for leaf in jax.tree.leaves(flow) if eqx.is_inexact_array(leaf)}
        assert dtypes == {jnp.dtype(jnp.float64)}
        keys = jr.split(jr.key(3), x.shape[0])
        z, c, xr, cr, xs, lq = _everything(flow, x, keys)
        for a in (z, c, xr, cr, xs, lq):
            assert a.dtype == jnp.float64
        assert finite(z, c, xr, cr, xs, lq)
        if kind == "vector":  # float64 all the way through: far below float32's resolution
            assert close(xr, x, 1e-10) and close(cr, c, 1e-10)
        else:
            assert jnp.array_equal(xr, x)
        g = loss_grads(flow, x, keys)
        assert finite(g) and {leaf.dtype for leaf in jax.tree.leaves(g)} == {jnp.dtype(jnp.float64)}


# ======================================================================================
# Bad input: a clear error, each (test_contract.py has the basic cases).
# ======================================================================================


@pytest.fixture(scope="module")
def vflow():
    x = jr.normal(jr.key(1), (16, 4))
    return nux.init(
        nux.Sequential(nux.ActNorm(), nux.Coupling(**SMALL), nux.UnitGaussianPrior()), x, key=jr.key(2)
    )


def test_non_numeric_and_complex_data_at_init_and_call(vflow):
    for bad in (jnp.zeros((4, 4), jnp.complex64), np.zeros((4, 4), np.complex128), jnp.zeros((4, 4), bool)):
        with pytest.raises(TypeError, match="real floating"):
            nux.init(nux.ActNorm(), bad, key=jr.key(0))
    with pytest.raises(TypeError, match="real floating"):
        vflow(np.zeros(4, np.complex128))
    with pytest.raises(TypeError, match="real floating"):
        jax.vmap(vflow)(jnp.zeros((3, 4), jnp.complex64))
    with pytest.raises(TypeError, match="Sequential expected a real floating array, got dtype <U1"):
        vflow(np.array(["a", "b", "c", "d"]))
    with pytest.raises(TypeError, match="real floating"):
        nux.log_prob(vflow, jnp.zeros(4, jnp.complex64))
    with pytest.raises(TypeError, match="real floating"):
        vflow(jnp.zeros(4, jnp.complex64), True)  # reverse checks too


def test_string_data_at_init_is_a_clear_error():
    with pytest.raises(TypeError, match="nux_eqx.init"):
        nux.init(nux.ActNorm(), np.array([["a", "b"], ["c", "d"]]), key=jr.key(0))


def test_nan_and_inf_in_data_under_check_finite(vflow):
    x = jr.normal(jr.key(0), (4, 4))
    plain = eqx.filter_jit(lambda f, v: jax.vmap(f)(v))
    with nux.check_finite():  # read when a function is traced: trace a new one inside
        checked = eqx.filter_jit(lambda f, v: jax.vmap(f)(v))
        checked(vflow, x)
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        xb = x.at[2, 1].set(bad)
        _, c = plain(vflow, xb)  # off by default: the non-finite value just flows through
        assert not finite(c)
        with pytest.raises(RUNTIME_ERRORS, match="Sequential received NaN or inf in its input"):
            checked(vflow, xb)  # the compiled check stays in the compiled function
    z, c = checked(vflow, x)  # finite data passes
    assert finite(z, c)
    with nux.check_finite():
        with pytest.raises(RUNTIME_ERRORS, match=r"received NaN or inf in its input \(reverse\)"):
            eqx.filter_jit(lambda f, v: jax.vmap(lambda u: f(u, True))(v))(vflow, x.at[0, 0].set(jnp.nan))


def test_check_finite_names_the_layer_that_broke(vflow):
    x = jr.normal(jr.key(0), (4, 4))
    poisoned = eqx.tree_at(
        lambda f: f.layers[1].network.layers[-1].bias,
        vflow,
        vflow.layers[1].network.layers[-1].bias.at[0].set(jnp.nan),
    )
    with nux.check_finite():
        with pytest.raises(
            RUNTIME_ERRORS, match=r"Coupling produced NaN or inf from a finite input \(forward\)"
        ):
            eqx.filter_jit(lambda f, v: jax.vmap(f)(v))(poisoned, x)
    # inside a training step, too (the framework checks are traced into the step)
    step = nux.train.make_step(optax.adam(1e-3), donate=False)
    with nux.check_finite():
        with pytest.raises(RUNTIME_ERRORS, match="Coupling produced NaN or inf"):
            step(poisoned, step.init(poisoned), x)


def test_conditional_gaussian_prior_cond_errors():
    x, c = jr.normal(jr.key(0), (6, 4)), jr.normal(jr.key(1), (6, 3))
    with pytest.raises(ValueError, match="ConditionalGaussianPrior needs a conditioning"):
        nux.init(nux.ConditionalGaussianPrior(hidden_layer_sizes=(8,)), x, key=jr.key(0))
    p = nux.init(nux.ConditionalGaussianPrior(hidden_layer_sizes=(8,)), x, key=jr.key(0), cond=c)
    assert finite(p(x[0], cond=c[0]))
    with pytest.raises(ValueError, match="ConditionalGaussianPrior is conditional and needs `cond=`"):
        p(x[0])
    with pytest.raises(
        nux.ShapeError, match=r"ConditionalGaussianPrior was initialised with .*\(3,\).* gives \(5,\)"
    ):
        p(x[0], cond=jnp.zeros(5))
    with pytest.raises(nux.ShapeError, match=r"\(6, 3\).*ONE example"):
        p(x[0], cond=c)  # a batched cond for one example
    with pytest.raises(nux.ShapeError, match="ConditionalGaussianPrior was initialised"):
        jax.vmap(lambda v: p(v, cond=jnp.zeros(2)))(x)
    with pytest.raises(ValueError, match="needs `cond` to sample"):
        nux.sample(p, jr.key(0))
    with pytest.raises(nux.ShapeError, match="ConditionalGaussianPrior was initialised"):
        nux.sample(p, jr.key(0), cond=jnp.zeros(5))
    xs, lq = nux.sample(p, jr.key(0), cond=c[0])
    assert xs.shape == (4,) and finite(xs, lq)


def test_conditioned_coupling_cond_errors():
    x, c = jr.normal(jr.key(0), (6, 4)), jr.normal(jr.key(1), (6, 3))
    flow = nux.Sequential(nux.ConditionedCoupling(hidden_layer_sizes=(8,)), nux.UnitGaussianPrior())
    with pytest.raises(ValueError, match="Coupling is conditional: pass the batched conditioning"):
        nux.init(flow, x, key=jr.key(0))
    with pytest.raises(nux.ShapeError, match="same leading batch axis"):
        nux.init(flow, x, key=jr.key(0), cond=c[:3])
    flow = nux.init(flow, x, key=jr.key(0), cond=c)
    with pytest.raises(ValueError, match="Coupling is conditional and needs `cond=`"):
        flow(x[0])  # the container passes no cond: the layer inside says so
    with pytest.raises(
        nux.ShapeError, match=r"Coupling was initialised with cond leaves of shapes \(\(3,\),\)"
    ):
        flow(x[0], cond=jnp.zeros(5))
    with pytest.raises(nux.ShapeError, match="one example per call"):
        flow(x[0], cond=c)
    with pytest.raises(nux.ShapeError, match="Coupling was initialised"):
        nux.sample(flow, jr.key(0), cond=jnp.zeros((2, 3)))
    z, lp = jax.vmap(flow)(x, cond=c)
    assert finite(z, lp)


def test_missing_key_inside_a_container_names_the_stochastic_layer(glow):
    flow, x = glow
    with pytest.raises(ValueError, match="UniformDequantization is stochastic and needs a PRNG key"):
        nux.log_prob(flow, x[0])
    with pytest.raises(ValueError, match="UniformDequantization is stochastic and needs a PRNG key"):
        jax.vmap(lambda v: nux.log_prob(flow, v))(x[:2])
    with pytest.raises(ValueError, match="needs a PRNG key"):
        nux.train.nll(flow, x[:2])  # the loss passes key=None on
    assert finite(nux.log_prob(flow, x[0], key=jr.key(0)))


# ======================================================================================
# Nothing lost: checkpoints.
# ======================================================================================


def test_checkpoint_header_describes_the_flow(tmp_path, vflow):
    from nux_eqx._serialise import VERSION, describe, read_header

    path = tmp_path / "f.eqx"
    nux.save(path, vflow, extra={"step": 7})
    header = read_header(path)
    assert header["version"] == VERSION and header["format"] == "nux_eqx-checkpoint"
    assert header["flow"] == "Sequential" and header["in_shape"] == [4] and header["dtype"] == "float32"
    assert header["leaves"] == describe(vflow) and header["extra"] == {"step": 7}
    assert bool(eqx.tree_equal(nux.load(path, vflow), vflow))


def _rewrite_header(src, dst, **changes):
    line, rest = src.read_bytes().split(b"\n", 1)
    header = json.loads(line)
    for k, v in changes.items():
        if v is None:
            header.pop(k, None)
        else:
            header[k] = v
    dst.write_bytes(json.dumps(header).encode() + b"\n" + rest)


def test_future_checkpoint_version_is_refused(tmp_path, vflow):
    from nux_eqx._serialise import VERSION

    nux.save(tmp_path / "f.eqx", vflow)
    _rewrite_header(tmp_path / "f.eqx", tmp_path / "future.eqx", version=VERSION + 1)
    with pytest.raises(
        nux.CheckpointError, match=rf"newer nux_eqx \(checkpoint format {VERSION + 1}.*upgrade"
    ):
        nux.load(tmp_path / "future.eqx", vflow)
    _rewrite_header(tmp_path / "f.eqx", tmp_path / "other.eqx", format="something-else")
    with pytest.raises(nux.CheckpointError, match="not a nux_eqx checkpoint"):
        nux.load(tmp_path / "other.eqx", vflow)
    with pytest.raises(FileNotFoundError):
        nux.load(tmp_path / "missing.eqx", vflow)


def test_malformed_checkpoint_version_is_a_checkpoint_error(tmp_path, vflow):
    nux.save(tmp_path / "f.eqx", vflow)
    _rewrite_header(tmp_path / "f.eqx", tmp_path / "bad.eqx", version="2")
    with pytest.raises(nux.CheckpointError):
        nux.load(tmp_path / "bad.eqx", vflow)


def test_checkpoint_of_another_architecture_or_dtype(tmp_path, vflow, glow):
    nux.save(tmp_path / "glow.eqx", glow[0])
    with pytest.raises(nux.CheckpointError, match="different flow"):
        nux.load(tmp_path / "glow.eqx", vflow)
    with pytest.raises(
        nux.CheckpointError, match="different flow"
    ):  # un-initialised: rebuilt from the header
        nux.load(tmp_path / "glow.eqx", nux.MultiscaleGlow(2, 1, 16, dequantize=17))
    with jax.enable_x64(True):
        f64 = nux.init(
            nux.Sequential(nux.ActNorm(), nux.Coupling(**SMALL), nux.UnitGaussianPrior()),
            jr.normal(jr.key(0), (16, 4), jnp.float64),
            key=jr.key(1),
        )
        nux.save(tmp_path / "f64.eqx", f64)
    with pytest.raises(nux.CheckpointError, match=r"float64 in the checkpoint but .* float32 in `like`"):
        nux.load(tmp_path / "f64.eqx", vflow)


def test_checkpoint_for_data_the_like_flow_cannot_take_is_a_checkpoint_error(tmp_path, glow):
    nux.save(tmp_path / "glow.eqx", glow[0])  # (8, 8, 1) images
    with pytest.raises(nux.CheckpointError):
        nux.load(tmp_path / "glow.eqx", nux.RealNVP(2, (16, 16)))  # a vector RealNVP cannot init on them


def test_checkpoint_with_same_leaves_but_other_layers_is_refused(tmp_path):
    x = jr.normal(jr.key(0), (16, 4))
    a = nux.init(nux.Sequential(nux.ActNorm(), nux.Reverse(), nux.UnitGaussianPrior()), x, key=jr.key(1))
    nux.save(tmp_path / "a.eqx", a)
    with pytest.raises(nux.CheckpointError):
        nux.load(tmp_path / "a.eqx", nux.Sequential(nux.ActNorm(), nux.Identity(), nux.UnitGaussianPrior()))


# ======================================================================================
# Determinism.
# ======================================================================================


def train_small(steps: int = 50) -> str:
    """Train a small RealNVP on 8 gaussians for `steps` jitted steps from seed 0 and return
    a SHA-256 of its parameters' bytes (also run in subprocesses by the test below)."""
    data = np.asarray(nux.data.toy("8gaussians", seed=0, n_train=1024, n_valid=0, n_test=0).train)
    flow = nux.init(nux.RealNVP(2, (16, 16)), jnp.asarray(data[:256]), key=jr.key(0))
    step = nux.train.make_step(optax.adam(1e-3))
    opt_state = step.init(flow)
    order = np.random.default_rng(0)
    for i in range(steps):
        idx = order.integers(0, len(data), 64)
        flow, opt_state, _ = step(flow, opt_state, jnp.asarray(data[idx]), key=jr.fold_in(jr.key(1), i))
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(nux.trainable(flow)[0]):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


def test_same_seed_same_parameters_in_one_process():
    assert train_small() == train_small()


def test_same_seed_same_parameters_across_processes():
    code = "import test_reliability as t; print('HASH', t.train_small())"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT / "tests",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    hashes = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        hashes.append([line for line in out.splitlines() if line.startswith("HASH")][-1])
    assert hashes[0] == hashes[1]


# ======================================================================================
# Slow: a Glow-sized flow, trained; and a (short) memory soak.
# ======================================================================================


@pytest.mark.slow
def test_trained_glow_sized_flow_round_trips_in_float32(digits):
    train = jnp.asarray(digits.train)
    flow = init(nux.MultiscaleGlow(2, 4, 64, dequantize=17), train[:64], key=jr.key(0))
    step = nux.train.make_step(optax.adam(1e-3))
    opt_state = step.init(flow)
    for i in range(300):
        idx = jr.randint(jr.fold_in(jr.key(1), i), (64,), 0, train.shape[0])
        flow, opt_state, loss = step(flow, opt_state, train[idx], key=jr.fold_in(jr.key(2), i))
    assert np.isfinite(float(loss))
    x = jnp.asarray(digits.test[:128])
    y, c, yr, cr, _ = _glow_round_trip(flow, x, jr.split(jr.key(3), len(x)))
    assert close(yr, y, 1e-4) and close(cr, c, 1e-4)


@pytest.mark.slow
def test_memory_soak_short():
    spec = importlib.util.spec_from_file_location("memory_soak", ROOT / "benchmarks" / "memory_soak.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.soak(steps=2000, every=250, warmup=250)
    assert np.isfinite(result["final_loss"])
    assert result["growth_mb"] < 50, result
