"""ContinuousFlow (FFJORD on diffrax): Hutchinson's estimator is unbiased, the density
integrates to 1, options and errors. `check_flow` runs on it through the registry
(tests/cases_continuous.py)."""

import sys
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx.testing import check_flow, scramble

pytest.importorskip("diffrax")


@pytest.fixture(scope="module")
def cnf2():
    x = jr.normal(jr.key(0), (8, 2))
    flow = nux.init(nux.ContinuousFlow(hidden_layer_sizes=(16,)), x, key=jr.key(1))
    return scramble(flow, jr.key(2), 0.3), x


def test_hutchinson_is_unbiased(cnf2):
    """The mean of the keyed estimate over many keys is the exact trace integral (within
    4 standard errors), and the keyed map is the same bijection."""
    flow, x = cnf2
    est = nux.StochasticLogDet(flow)
    n = 3000
    keys = jr.split(jr.key(3), n)

    @eqx.filter_jit
    def run(est, flow, x0, keys):
        z_e, c_e = jax.vmap(lambda k: est(x0, key=k))(keys)
        z, c = flow(x0)
        return z_e, c_e, z, c

    for x0 in x[:2]:
        z_e, c_e, z, c = run(est, flow, x0, keys)
        se = float(jnp.std(c_e)) / np.sqrt(n)
        assert float(jnp.std(c_e)) > 0  # it is an estimate, not the exact value
        assert abs(float(jnp.mean(c_e)) - float(c)) < 4 * se + 1e-4, (float(jnp.mean(c_e)), float(c), se)
        np.testing.assert_allclose(z_e, jnp.broadcast_to(z, z_e.shape), atol=1e-3)


def test_density_integrates_to_one(cnf2):
    flow, _ = cnf2
    model = nux.init(
        nux.Sequential(flow, nux.UnitGaussianPrior()), jr.normal(jr.key(0), (4, 2)), key=jr.key(1)
    )
    g = jnp.linspace(-7.0, 7.0, 141)
    xx, yy = jnp.meshgrid(g, g)
    pts = jnp.stack([xx.ravel(), yy.ravel()], -1)
    lp = eqx.filter_jit(jax.vmap(lambda f, v: nux.log_prob(f, v), in_axes=(None, 0)))(model, pts)
    total = float(jnp.sum(jnp.exp(lp)) * (g[1] - g[0]) ** 2)
    assert abs(total - 1.0) < 5e-3, total


def test_reverse_integrates_backwards(cnf2):
    """Reverse is the ODE backwards: round trip and the same contribution, also with the
    estimator (the same key gives the same probe both ways)."""
    flow, x = cnf2
    z, c = jax.vmap(flow)(x)
    xr, cr = jax.vmap(lambda v: flow(v, True))(z)
    np.testing.assert_allclose(xr, x, atol=1e-3)
    np.testing.assert_allclose(cr, c, atol=1e-3)
    est = nux.StochasticLogDet(flow)
    k = jr.key(5)
    z1, c1 = est(x[0], key=k)
    x1, c2 = est(z1, True, key=k)
    np.testing.assert_allclose(x1, x[0], atol=1e-3)
    np.testing.assert_allclose(c2, c1, atol=1e-3)
    # reverse without a key is exact
    np.testing.assert_allclose(est(z[0], True)[1], flow(z[0], True)[1], atol=1e-6)


class _Field(eqx.Module):
    w: jax.Array

    def __call__(self, t, x, cond):
        return jnp.tanh(self.w @ x) * (1.0 + t) + (0.0 if cond is None else cond[0])


def test_custom_vector_field_and_conditioning():
    x = jr.normal(jr.key(0), (4, 3))
    cond = jr.normal(jr.key(1), (4, 2))
    field = _Field(0.5 * jr.normal(jr.key(2), (3, 3)))
    flow = nux.init(nux.ContinuousFlow(field), x, key=jr.key(3), cond=cond)
    # the given field is used as it is (not re-initialised; `init` may return new arrays)
    assert jnp.array_equal(flow.vector_field.w, field.w)
    z, c = jax.vmap(lambda v, cc: flow(v, cond=cc))(x, cond)
    z0, _ = jax.vmap(lambda v, cc: flow(v, cond=cc))(x, jnp.zeros_like(cond))
    assert not np.allclose(z, z0)  # the conditioning reaches the field
    # brute-force log|det| of the solve
    J = jax.jacobian(lambda v: flow(v, cond=cond[0])[0])(x[0])
    np.testing.assert_allclose(c[0], jnp.linalg.slogdet(J)[1], atol=1e-3)


def test_backsolve_adjoint_gradients_match_recursive(cnf2):
    flow, x = cnf2
    back = eqx.tree_at(lambda f: f.adjoint, flow, nux.ContinuousFlow(adjoint="backsolve").adjoint)

    def loss(f):
        return jnp.sum(jax.vmap(f)(x[:4])[1])

    g1 = jax.tree.leaves(eqx.filter_grad(loss)(flow))
    g2 = jax.tree.leaves(eqx.filter_grad(loss)(back))
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3)


def test_stochastic_log_det_switches_a_whole_flow(cnf2):
    flow, x = cnf2
    model = nux.Sequential(flow, nux.Sequential(nux.ActNorm(), flow), nux.UnitGaussianPrior())
    on = nux.stochastic_log_det(model)
    assert isinstance(on.layers[0], nux.StochasticLogDet)
    assert isinstance(on.layers[1].layers[1], nux.StochasticLogDet)
    assert nux.stochastic_log_det(on).layers[0].flow is flow  # idempotent
    off = nux.stochastic_log_det(on, False)
    assert off.layers[0] is flow and off.layers[1].layers[1] is flow
    assert len(jax.tree.leaves(on)) == len(jax.tree.leaves(model))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        nux.init(on, x, key=jr.key(0))(x[0])


def test_errors(monkeypatch):
    with pytest.raises(ValueError, match="adjoint"):
        nux.ContinuousFlow(adjoint="nope")
    with pytest.raises(ValueError, match="noise"):
        nux.ContinuousFlow(noise="uniform")
    with pytest.raises(ValueError, match="t1"):
        nux.ContinuousFlow(t1=0.0)
    with pytest.raises(TypeError, match="StochasticLogDet wraps"):
        nux.StochasticLogDet(nux.ActNorm())
    bad = lambda shape, n_cond, *, key: _Field(jnp.zeros((2, shape[0])))  # noqa: E731
    with pytest.raises(ValueError, match="vector field maps"):
        nux.init(nux.ContinuousFlow(bad), jnp.zeros((2, 3)), key=jr.key(0))
    monkeypatch.setitem(sys.modules, "diffrax", None)  # as if not installed
    with pytest.raises(ImportError, match=r"nux_eqx\[continuous\]"):
        nux.ContinuousFlow()


class _Sloppy(nux.AbstractBijection):
    """An identity whose inverse is off by 1e-4, like a solve with a loose tolerance."""

    def transform(self, x, reverse, *, key, cond):
        return (x + 1e-4 if reverse else x), jnp.zeros((), x.dtype)


class _DeclaredSloppy(nux.AbstractBijection):
    check_tolerance: ClassVar[float] = 1e-3

    def transform(self, x, reverse, *, key, cond):
        return (x + 1e-4 if reverse else x), jnp.zeros((), x.dtype)


def test_check_flow_uses_the_declared_tolerance():
    """check_flow loosens its comparisons to the tolerance a layer declares, and only for
    flows that contain such a layer."""
    x = jr.normal(jr.key(0), (4, 2))
    with pytest.raises(AssertionError, match=r"reverse\(forward\(x\)\) == x"):
        check_flow(_Sloppy(), x, key=jr.key(1), scramble_params=False)
    check_flow(_DeclaredSloppy(), x, key=jr.key(1), scramble_params=False)
    check_flow(nux.Sequential(_DeclaredSloppy(), nux.UnitGaussianPrior()), x, key=jr.key(1))
    assert nux.ContinuousFlow(rtol=1e-4, atol=1e-6).check_tolerance == pytest.approx(1e-2)
