"""`LeanJit`, the per-step dispatcher of `make_step` and `fit`: same results as
`eqx.filter_jit`, a compile per structure, donation, and a clear error for unhashable statics."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nux_eqx.train._jit import LeanJit


class _Scale(eqx.Module):
    w: jax.Array
    act: object = eqx.field(static=True)
    power: int = 2  # a non-array leaf: static for the jit


def _f(x, m):
    return eqx.tree_at(lambda t: t.w, m, m.act(m.w) ** m.power * x), jnp.sum(m.w)


def test_matches_filter_jit_and_caches_per_structure():
    calls = []

    def f(x, m):
        calls.append(1)  # runs only while tracing
        return _f(x, m)

    lean = LeanJit(f)
    m = _Scale(jnp.arange(3.0), jnp.tanh)
    out, s = lean(jnp.asarray(2.0), m)
    ref, rs = eqx.filter_jit(_f)(jnp.asarray(2.0), m)
    assert isinstance(out, _Scale) and out.act is jnp.tanh and out.power == 2
    np.testing.assert_allclose(out.w, ref.w)
    np.testing.assert_allclose(s, rs)
    lean(jnp.asarray(3.0), _Scale(jnp.ones(3), jnp.tanh))
    assert len(calls) == 1  # same structure and statics: no retrace
    out3, _ = lean(jnp.asarray(2.0), _Scale(jnp.arange(3.0), jnp.tanh, 3))
    assert len(calls) == 2  # a different static leaf recompiles
    np.testing.assert_allclose(out3.w, np.tanh(np.arange(3.0)) ** 3 * 2)


def test_donation_consumes_all_but_first():
    lean = LeanJit(lambda x, m: m.w + x, donate="all-except-first")
    x = jnp.ones(3)
    m = _Scale(jnp.arange(3.0), jnp.tanh)
    lean(x, m)
    assert not x.is_deleted()
    assert m.w.is_deleted()
    y = jnp.ones(3)
    LeanJit(lambda x, m: m.w + x)(x, _Scale(y, jnp.tanh))
    assert not y.is_deleted()


def test_unhashable_static_is_a_clear_error():
    lean = LeanJit(lambda x, m: m.w * x)

    class Unhashable:
        __hash__ = None

        def __call__(self, w):
            return w

    m = _Scale(jnp.arange(3.0), jnp.tanh, power=Unhashable())  # a non-array leaf
    with pytest.raises(TypeError, match="not hashable.*Unhashable"):
        lean(jnp.asarray(2.0), m)


def test_rejects_unknown_donate():
    with pytest.raises(ValueError, match="donate"):
        LeanJit(lambda x: x, donate="all")
