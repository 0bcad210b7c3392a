"""Registry cases: autoregressive flows, splines and the remaining elementwise layers."""

import jax.random as jr
from cases import BATCH, Case

import nux_eqx as nux

H = dict(hidden_layer_sizes=(16, 16))


def wide_vector(key):
    """(6, 4) vectors with some entries outside [-3, 3], to exercise the spline tails."""
    return 2.5 * jr.normal(key, (BATCH, 4))


def simplex_side(key):
    """(6, 4) vectors of moderate size for SoftmaxPP (the last probability stays away from 0,
    so the float32 round trip is accurate)."""
    return 0.3 * jr.normal(key, (BATCH, 4))


def cond3(key):
    """A (6, 3) conditioning batch."""
    return jr.normal(key, (BATCH, 3))


def cond_tree(key):
    """A pytree conditioning batch: a (6, 2) leaf and a (6, 2, 2) leaf."""
    k1, k2 = jr.split(key)
    return {"a": jr.normal(k1, (BATCH, 2)), "b": jr.normal(k2, (BATCH, 2, 2))}


CASES = {
    "MAF-sequential": Case(lambda: nux.MAF(**H), covers=("MAF",)),
    "MAF-random": Case(lambda: nux.MAF(ordering="random", seed=3, **H), covers=("MAF",)),
    "MAF-1d": Case(
        lambda: nux.MAF(hidden_layer_sizes=()), lambda k: jr.normal(k, (BATCH, 1)), covers=("MAF",)
    ),
    "IAF": Case(lambda: nux.Invert(nux.MAF(ordering="reversed", **H)), covers=("Invert", "MAF")),
    "ConditionalMAF": Case(
        lambda: nux.ConditionalMAF(ordering="reversed", **H), cond=cond_tree, covers=("ConditionalMAF",)
    ),
    "MaskedAutoregressiveSpline": Case(
        lambda: nux.MaskedAutoregressiveSpline(K=4, ordering="random", **H),
        wide_vector,
        covers=("MaskedAutoregressiveSpline",),
    ),
    "ConditionalMaskedAutoregressiveSpline": Case(
        lambda: nux.ConditionalMaskedAutoregressiveSpline(K=3, B=2.0, **H),
        cond=cond3,
        covers=("ConditionalMaskedAutoregressiveSpline",),
    ),
    "NeuralSpline": Case(
        lambda: nux.NeuralSpline(K=4, **H), lambda k: 2.5 * jr.normal(k, (BATCH, 5)), covers=("NeuralSpline",)
    ),
    "NeuralSpline-image": Case(
        lambda: nux.NeuralSpline(K=3, n_channels=8), "image", covers=("NeuralSpline",)
    ),
    "RationalQuadraticSpline": Case(lambda: nux.RationalQuadraticSpline(K=5), wide_vector),
    "ElementwiseAffine": Case(lambda: nux.ElementwiseAffine(), "image"),
    "Shift": Case(lambda: nux.Shift()),
    # A transformer with a non-zero initial parameter in an autoregressive layer.
    "MaskedAutoregressive-softplus": Case(
        lambda: nux.MaskedAutoregressive(nux.ElementwiseAffine(scale="softplus"), **H),
        covers=("MaskedAutoregressive",),
    ),
    "Tanh": Case(lambda: nux.Tanh()),
    "Softplus": Case(lambda: nux.Softplus(), "image"),
    "SoftmaxPP": Case(lambda: nux.SoftmaxPP(), simplex_side),
}
