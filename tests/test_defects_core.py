"""Regression tests for the core defects of issue 16 (each failed before its fix)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest
from cases import all_cases, data_of
from jaxtyping import Array

import nux_eqx as nux

CASES = all_cases()


def _needs_key(flow) -> bool:
    stochastic = jax.tree.leaves(
        flow, is_leaf=lambda m: isinstance(m, nux.AbstractFlow) and type(m).needs_key
    )
    return any(isinstance(m, nux.AbstractFlow) for m in stochastic)


# ---- 1. Equinox's transforms take an initialised flow directly ------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_equinox_transforms_take_the_flow(name):
    """`eqx.filter_jit(flow)`, `eqx.filter_vmap(flow)` and `eqx.filter_grad` over a function of
    the flow, on every registry case. To stay cheap only the jitted forward pass of one
    example is compiled; the vmapped gradient over 2 examples is traced (`filter_eval_shape`),
    which is where the wrappers read the flow (check_flow covers their numerics)."""
    case = CASES[name]
    k_data, k_cond, k_init, k_call = jr.split(jr.key(sum(map(ord, name))), 4)
    x = data_of(case, k_data)
    cond = None if case.cond is None else case.cond(k_cond)
    flow = nux.init(case.make(), x, key=k_init, cond=cond)
    xs = x[:2]
    cs = None if cond is None else jax.tree.map(lambda c: c[:2], cond)
    c0 = None if cs is None else jax.tree.map(lambda c: c[0], cs)

    z0, lp0 = eqx.filter_jit(flow)(xs[0], key=k_call, cond=c0)
    assert z0.shape == flow.out_shape and jnp.isfinite(lp0)

    plain = cs is None and not _needs_key(flow)

    def loss(m):
        if plain:
            z, lp = eqx.filter_vmap(m)(xs)  # the flow itself, wrapped
        else:  # filter_vmap takes no keywords
            z, lp = eqx.filter_vmap(lambda v, c: m(v, key=k_call, cond=c))(xs, cs)
        return jnp.sum(lp), z

    grads, z = eqx.filter_eval_shape(eqx.filter_grad(loss, has_aux=True), flow)
    assert z.shape == (2, *flow.out_shape)
    assert jax.tree.structure(grads) == jax.tree.structure(eqx.filter(flow, eqx.is_inexact_array))


class _Double(nux.AbstractFlow):
    """A user layer with its own `__init__` that leaves the recorded shapes at their defaults."""

    layer_kind = "bijective"
    factor: float

    def __init__(self, factor: float = 2.0):
        self.factor = factor

    def transform(self, x: Array, reverse: bool, *, key, cond):
        f = 1 / self.factor if reverse else self.factor
        return x * f, x.size * jnp.log(jnp.abs(jnp.asarray(self.factor)))


def test_flow_with_custom_init_survives_tree_round_trips():
    flow = nux.Sequential(_Double(), nux.UnitGaussianPrior())
    flow = jax.tree.map(lambda a: a, nux.init(flow, jnp.ones((3, 2)), key=jr.key(0)))
    for m in jax.tree.leaves(flow, is_leaf=lambda m: isinstance(m, eqx.Module)):
        if isinstance(m, eqx.Module):
            assert "__name__" not in vars(m), type(m).__name__
    z, lp = eqx.filter_jit(flow)(jnp.ones(2))
    assert jnp.allclose(z, 2.0)
    zs, _ = eqx.filter_vmap(flow)(jnp.ones((3, 2)))
    assert zs.shape == (3, 2)
