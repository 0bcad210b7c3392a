"""Registry cases: core vector layers, containers and priors (the core contract issue)."""

import jax.random as jr
from cases import Case

import nux_eqx as nux

SMALL = dict(hidden_layer_sizes=(16, 16))

CASES = {
    "Identity": Case(lambda: nux.Identity()),
    "Scale": Case(lambda: nux.Scale(2.5)),
    "Reverse": Case(lambda: nux.Reverse()),
    "Flatten": Case(lambda: nux.Flatten(), "image"),
    "Reshape": Case(lambda: nux.Reshape((2, -1)), "image"),
    "Transpose": Case(lambda: nux.Transpose((1, 0, 2)), "image"),
    "Logit": Case(lambda: nux.Logit(), "unit_vector"),
    "Logit-lmbda0": Case(lambda: nux.Logit(lmbda=0.0), "unit_vector", covers=("Logit",)),
    "Sigmoid": Case(lambda: nux.Sigmoid()),
    "Sigmoid-lmbda": Case(lambda: nux.Sigmoid(lmbda=0.1), covers=("Sigmoid",)),
    "LeakyReLU": Case(lambda: nux.LeakyReLU(0.2)),
    "ActNorm": Case(lambda: nux.ActNorm()),
    "Coupling-affine": Case(lambda: nux.Coupling(**SMALL), covers=("Coupling",)),
    "Coupling-additive": Case(lambda: nux.Coupling(kind="additive", **SMALL), covers=("Coupling",)),
    "Coupling-odd": Case(lambda: nux.Coupling(**SMALL), lambda k: jr.normal(k, (6, 5)), covers=("Coupling",)),
    "UnitGaussianPrior": Case(lambda: nux.UnitGaussianPrior()),
    "UnitGaussianPrior-2d": Case(
        lambda: nux.UnitGaussianPrior(), lambda k: jr.normal(k, (6, 2)), covers=("UnitGaussianPrior",)
    ),
    "Sequential": Case(
        lambda: nux.Sequential(nux.ActNorm(), nux.Coupling(**SMALL), nux.Reverse(), nux.UnitGaussianPrior()),
        covers=("Sequential", "sequential"),
    ),
    "Invert": Case(lambda: nux.Invert(nux.Sequential(nux.Coupling(**SMALL), nux.LeakyReLU(0.3)))),
}
