"""`Logit` outside its domain (data not scaled to [0, 1]): NaN, documented, and named by
`nux_eqx.check_finite()` wherever the layer sits."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nux_eqx as nux

GOOD = jnp.array([[0.5, 0.2, 0.9], [0.3, 0.4, 0.1]])


def _flows(lmbda):
    return {
        "alone": nux.Logit(lmbda),
        "then-layers": nux.Sequential(
            nux.Logit(lmbda), nux.ActNorm(), nux.Reverse(), nux.UnitGaussianPrior()
        ),
        "nested": nux.Sequential(
            nux.Sequential(nux.Reverse(), nux.Logit(lmbda)), nux.ActNorm(), nux.UnitGaussianPrior()
        ),
    }


def test_the_docstring_says_what_happens_outside_0_1():
    doc = nux.Logit.__doc__
    assert "outside `[0, 1]`" in doc and "NaN" in doc and "check_finite" in doc and "1e6" in doc


@pytest.mark.parametrize("lmbda, value", [(0.05, 50.0), (0.0, 1e6), (0.2, -3.0)])
def test_out_of_range_is_nan_and_check_finite_names_logit(lmbda, value):
    bad = jnp.array([value, 0.5, 0.5])
    for where, flow in _flows(lmbda).items():
        flow = nux.init(flow, GOOD, key=jax.random.key(0))
        _, lp = flow(bad)
        assert np.isnan(float(lp)), where  # silently NaN, as documented
        calls = {
            "eager": lambda f: f(bad),
            "vmap": lambda f: jax.vmap(lambda a: nux.log_prob(f, a))(bad[None]),
            "filter_jit": lambda f: eqx.filter_jit(lambda f, a: f(a))(f, bad),
        }
        for how, call in calls.items():
            with nux.check_finite(), pytest.raises(Exception) as info:
                jax.block_until_ready(call(flow))
            assert "Logit produced NaN or inf" in str(info.value), (where, how)


def test_check_finite_names_logit_at_init():
    with nux.check_finite(), pytest.raises(Exception, match="Logit produced NaN or inf"):
        nux.init(_flows(0.05)["then-layers"], GOOD.at[0, 0].set(50.0), key=jax.random.key(0))
