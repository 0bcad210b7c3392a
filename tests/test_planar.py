"""Planar and radial flows: invertibility constraints, root-finding accuracy, direction."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx.bijective._planar import _planar_u_hat
from nux_eqx.testing import scramble


def _planar(key, d=3, direction="sample", **kw):
    return nux.init(nux.Planar(direction, **kw), jr.normal(key, (4, d)), key=key)


def _radial(key, d=3, direction="sample"):
    return nux.init(nux.Radial(direction), jr.normal(key, (4, d)), key=key)


def test_planar_u_hat_keeps_w_dot_u_above_minus_one():
    # u anti-parallel to w is the case the constraint exists for: w.u = -|u||w| << -1.
    w = jnp.array([1.0, 2.0, -0.5])
    for c in [-100.0, -3.0, -1.0, 0.0, 0.5, 7.0]:
        u_hat, a = _planar_u_hat(w, c * w)
        assert float(a) > -1.0
        assert float(jnp.dot(w, u_hat)) > -1.0  # float32 rounding of u_hat (|u| ~ 200) stays inside
        np.testing.assert_allclose(float(jnp.dot(w, u_hat)), float(a), atol=5e-5)
    # a u orthogonal to w with w.u >> 0 keeps its component off w
    u = jnp.array([3.0, 0.0, 6.0])
    u_hat, _ = _planar_u_hat(w, u)
    perp = lambda v: v - jnp.dot(v, w) / jnp.dot(w, w) * w  # noqa: E731
    np.testing.assert_allclose(perp(u_hat), perp(u), atol=1e-5)


def test_radial_beta_stays_above_minus_alpha():
    r = _radial(jr.key(0))
    for b in [-50.0, -5.0, 0.0, 5.0]:
        q = eqx.tree_at(lambda s: s.beta_raw, r, jnp.asarray(b))
        alpha, beta = q._params()
        assert float(beta) > -float(alpha)


@pytest.mark.parametrize("scale", [-30.0, -3.0, 0.3, 4.0, 30.0])
def test_planar_inverse_reaches_the_root_in_float64(scale):
    # w.u_hat from about -1 (slope of g close to 0 at s = 0) to large
    with jax.enable_x64(True):
        key = jr.key(1)
        p = _planar(key, d=3)
        p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if eqx.is_inexact_array(a) else a, p)
        p = eqx.tree_at(lambda s: (s.u, s.b), p, (scale * p.w, jnp.asarray(0.3, jnp.float64)))
        x = 4.0 * jr.normal(jr.key(2), (64, 3), jnp.float64)
        # sample direction: reverse is f (closed form), forward root-finds
        y, c = jax.vmap(lambda v: p(v, True))(x)
        xr, cr = jax.vmap(lambda v: p(v))(y)
        np.testing.assert_allclose(np.asarray(xr), np.asarray(x), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(cr), np.asarray(c), rtol=1e-10, atol=1e-12)


def test_radial_inverse_is_exact_for_extreme_parameters():
    with jax.enable_x64(True):
        r = _radial(jr.key(3), d=4)
        r = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if eqx.is_inexact_array(a) else a, r)
        x = jnp.concatenate([r.z0[None], r.z0[None] + 1e-9, 5.0 * jr.normal(jr.key(4), (30, 4), jnp.float64)])
        for a_raw, b_raw in [(-3.0, -20.0), (2.0, 6.0), (0.0, 0.0), (-8.0, 3.0)]:
            q = eqx.tree_at(lambda s: (s.alpha_raw, s.beta_raw), r, (jnp.asarray(a_raw), jnp.asarray(b_raw)))
            y, c = jax.vmap(lambda v, q=q: q(v, True))(x)
            xr, cr = jax.vmap(lambda v, q=q: q(v))(y)
            np.testing.assert_allclose(np.asarray(xr), np.asarray(x), rtol=1e-11, atol=1e-11)
            # (beta close to -alpha next to z0: 1 + beta / alpha ~ 1e-4 loses 4 digits)
            np.testing.assert_allclose(np.asarray(cr), np.asarray(c), rtol=1e-8, atol=1e-11)


def _loops(fn, *args):
    text = str(jax.make_jaxpr(fn)(*args))
    return "while" in text or "scan" in text


def test_sample_direction_never_root_finds():
    key = jr.key(5)
    x = jr.normal(key, (3,))
    p = _planar(key)
    assert not _loops(lambda v: p(v, True), x)  # latent -> data: closed form
    assert _loops(lambda v: p(v), x)  # data -> latent: root-finding
    flow = nux.init(nux.Sequential(nux.Planar(), nux.Radial(), nux.UnitGaussianPrior()), x[None], key=key)
    assert not _loops(lambda k: nux.sample(flow, k), key)
    assert not _loops(
        lambda f: nux.train.reverse_kl(f, lambda v: -0.5 * jnp.sum(v**2), key=key, n_samples=4), flow
    )
    d = _planar(key, direction="density")
    assert not _loops(lambda v: d(v), x)
    assert _loops(lambda v: d(v, True), x)


def test_root_found_gradients_match_finite_differences():
    # d log_prob / d params through the root-finding forward pass (implicit gradient)
    with jax.enable_x64(True):
        key = jr.key(6)
        flow = nux.init(
            nux.Sequential(nux.Planar(), nux.Radial(), nux.UnitGaussianPrior()),
            jr.normal(key, (4, 2), jnp.float64),
            key=key,
        )
        flow = eqx.tree_at(lambda f: f.layers[0].u, flow, flow.layers[0].u + 1.3)
        x = jnp.array([0.7, -1.1])
        params, static = nux.trainable(flow)
        flat, unravel = jax.flatten_util.ravel_pytree(params)

        @jax.jit
        def f(theta):
            return nux.log_prob(eqx.combine(unravel(theta), static), x)

        g = jax.grad(f)(flat)
        eps = 1e-6
        fd = jnp.stack(
            [(f(flat.at[i].add(eps)) - f(flat.at[i].add(-eps))) / (2 * eps) for i in range(flat.size)]
        )
        np.testing.assert_allclose(np.asarray(g), np.asarray(fd), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("direction", ["sample", "density"])
def test_planar_radial_density_integrates_to_one(direction):
    key = jr.key(7)
    layers = [nux.Planar(direction), nux.Radial(direction), nux.Planar(direction)]
    flow = nux.init(nux.Sequential(*layers, nux.UnitGaussianPrior()), jr.normal(key, (64, 2)), key=key)
    flow = scramble(flow, jr.key(8), scale=0.5)
    g = jnp.linspace(-8.0, 8.0, 321)
    grid = jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 2)
    dens = jnp.exp(jax.jit(jax.vmap(lambda v: nux.log_prob(flow, v)))(grid))
    total = float(jnp.sum(dens)) * float(g[1] - g[0]) ** 2
    assert abs(total - 1.0) < 2e-3, total


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="direction must be 'sample'"):
        nux.Planar("forward")
    with pytest.raises(ValueError, match="direction must be 'sample'"):
        nux.Radial(direction="reverse")
    with pytest.raises(ValueError, match="n_bisect"):
        nux.Planar(n_bisect=-1)
    with pytest.raises(nux.ShapeError, match="Flatten"):
        nux.init(nux.Planar(), jnp.zeros((4, 2, 2)), key=jr.key(0))
    with pytest.raises(nux.ShapeError, match="Flatten"):
        nux.init(nux.Radial(), jnp.zeros((4, 2, 2)), key=jr.key(0))


def test_planar_root_finder_reaches_float_rounding():
    # the 1-D solver alone, float32: residual of s + a tanh(s) = c at rounding level,
    # for a from the bound -1 + 1e-4 to 100 and c far out on both sides
    from nux_eqx.bijective._planar import _planar_root

    a = jnp.array([-1 + 1e-4, -0.99, -0.5, 0.0, 0.5, 3.0, 100.0])
    c = jnp.array([-200.0, -3.0, -1e-3, 0.0, 1e-3, 0.7, 5.0, 150.0])
    A, C = (v.reshape(-1) for v in jnp.meshgrid(a, c))
    s = jax.jit(jax.vmap(lambda c_, a_: _planar_root(c_, a_, 30, 4)))(C, A)
    resid = np.abs(np.asarray(s + A * jnp.tanh(s) - C, np.float64))
    scale = np.abs(np.asarray(C)) + np.abs(np.asarray(A)) + 1.0
    assert np.all(resid <= 8 * np.finfo(np.float32).eps * scale), resid.max()
