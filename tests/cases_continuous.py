"""Registry cases: continuous flows (`ContinuousFlow`, on diffrax) and residual flows, and
the `StochasticLogDet` wrapper that trains them with their log-determinant estimators.

Tiny sizes (2-D, one hidden layer of 8) keep the ODE solves' compiles cheap."""

import jax.random as jr
from cases import BATCH, Case

import nux_eqx as nux


def vec2(key):
    """(6, 2) standard normal vectors."""
    return jr.normal(key, (BATCH, 2))


def cond3(key):
    """(6, 3) conditioning vectors."""
    return jr.normal(key, (BATCH, 3))


def _cnf(**kw):
    return nux.ContinuousFlow(hidden_layer_sizes=(8,), **kw)


def _res(**kw):
    return nux.ResidualFlow((8,), n_channels=4, **kw)


CASES = {
    "ContinuousFlow": Case(lambda: _cnf(), vec2),
    "ContinuousFlow-conditional-stochastic": Case(
        lambda: nux.StochasticLogDet(_cnf()), vec2, cond=cond3, covers=("StochasticLogDet", "ContinuousFlow")
    ),
    "ResidualFlow": Case(lambda: _res()),
    "ResidualFlow-image": Case(lambda: _res(), "image", covers=("ResidualFlow",)),
    "ResidualFlow-conditional-stochastic": Case(
        lambda: nux.StochasticLogDet(_res()), cond=cond3, covers=("StochasticLogDet", "ResidualFlow")
    ),
    # wrapped and unwrapped again by stochastic_log_det: a plain bijective stack
    "ResidualFlow-stack": Case(
        lambda: nux.stochastic_log_det(
            nux.stochastic_log_det(nux.Sequential(nux.ActNorm(), _res(), nux.ActNorm(), _res())), False
        ),
        covers=("ResidualFlow",),
    ),
}
