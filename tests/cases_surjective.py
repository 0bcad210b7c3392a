"""Registry cases: the priors of `nux_eqx/priors/_more.py` and the surjective / stochastic
layers (SurVAE) of `nux_eqx/surjective/`."""

import jax.numpy as jnp
import jax.random as jr
from cases import BATCH, Case

import nux_eqx as nux

SMALL = dict(hidden_layer_sizes=(8,), n_channels=8)


def vec2(key):
    """(6, 2) standard normal vectors (the priors' Monte-Carlo normalisation check runs
    for at most 2 dimensions)."""
    return jr.normal(key, (BATCH, 2))


def simplex2(key):
    """(6, 2): the first two coordinates of points inside the 3-simplex."""
    return jr.dirichlet(key, jnp.ones(3) * 2.0, (BATCH,))[:, :2]


def labels(key):
    """(6,) integer labels in -1 .. 2, the first one unlabelled (-1) so the Monte-Carlo
    check integrates the marginal."""
    return jnp.concatenate([jnp.array([-1]), jr.randint(key, (BATCH - 1,), -1, 3)])


CASES = {
    # ---- priors ------------------------------------------------------------------------
    "DiagGaussianPrior": Case(lambda: nux.DiagGaussianPrior(), vec2),
    "AffineGaussianPriorFullCov": Case(lambda: nux.AffineGaussianPriorFullCov(out_dim=2)),
    "AffineGaussianPriorFullCov-2d": Case(
        lambda: nux.AffineGaussianPriorFullCov(out_dim=1), vec2, covers=("AffineGaussianPriorFullCov",)
    ),
    "GMMPrior": Case(lambda: nux.GMMPrior(n_classes=3), cond=labels),
    "GMMPrior-2d": Case(lambda: nux.GMMPrior(n_classes=3), vec2, cond=labels, covers=("GMMPrior",)),
    "GMMPrior-unlabelled": Case(lambda: nux.GMMPrior(n_classes=3), vec2, covers=("GMMPrior",)),
    "UniformDirichletPrior": Case(lambda: nux.UniformDirichletPrior(), simplex2),
    "UniformDirichletPrior-alpha": Case(
        lambda: nux.UniformDirichletPrior(alpha_scale=2.0), simplex2, covers=("UniformDirichletPrior",)
    ),
    "MixtureGaussianPrior": Case(lambda: nux.MixtureGaussianPrior(K=3), vec2),
    "LogisticPrior": Case(lambda: nux.LogisticPrior(), vec2),
    "StudentTPrior": Case(lambda: nux.StudentTPrior(df=5.0), vec2),
    # ---- inference surjections (exact) --------------------------------------------------
    "MaxPool": Case(lambda: nux.MaxPool(), "image"),
    "MaxPool-conditional": Case(lambda: nux.MaxPool(n_channels=8), "image", covers=("MaxPool",)),
    "Slice": Case(lambda: nux.Slice(1, **SMALL)),
    "Slice-image": Case(lambda: nux.Slice(1, **SMALL), "image", covers=("Slice",)),
    "Abs": Case(lambda: nux.Abs()),
    "Sort": Case(lambda: nux.Sort()),
    # ---- stochastic layers (bounds) ---------------------------------------------------
    "VariationalDequantization": Case(
        lambda: nux.VariationalDequantization(scale=17.0, **SMALL), "levels_image"
    ),
    "Padding": Case(lambda: nux.Padding(2, **SMALL)),
    "Padding-image": Case(lambda: nux.Padding(1, **SMALL), "image", covers=("Padding",)),
    # ---- in a flow: sampling runs the surjections in reverse ------------------------
    "Surjective-flow": Case(
        lambda: nux.Sequential(
            nux.MaxPool(),
            nux.Flatten(),
            nux.Abs(),
            nux.Sort(),
            nux.UnitGaussianPrior(),
        ),
        "image",
        covers=("MaxPool", "Abs", "Sort"),
    ),
}
