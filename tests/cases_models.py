"""Registry cases: the ready-made models of the training issue (and `Permute`, `Roll`)."""

import jax.random as jr
from cases import Case

import nux_eqx as nux

CASES = {
    "Permute": Case(lambda: nux.Permute(3), lambda k: jr.normal(k, (6, 5))),
    "Permute-image": Case(lambda: nux.Permute(1), "image", covers=("Permute",)),
    "Permute-from-key": Case(
        lambda: nux.Permute(seed=None), lambda k: jr.normal(k, (6, 5)), covers=("Permute",)
    ),
    "Roll": Case(lambda: nux.Roll(), lambda k: jr.normal(k, (6, 7))),
    "Roll-shift": Case(lambda: nux.Roll(-3), lambda k: jr.normal(k, (6, 5)), covers=("Roll",)),
    "Roll-image": Case(lambda: nux.Roll(), "image", covers=("Roll",)),
    "RealNVP-random": Case(
        lambda: nux.RealNVP(n_layers=2, hidden_layer_sizes=(8,), permutation="random"),
        lambda k: jr.normal(k, (6, 5)),
        covers=("RealNVP",),
    ),
    "RealNVP": Case(
        lambda: nux.RealNVP(n_layers=2, hidden_layer_sizes=(8,)),
        lambda k: jr.normal(k, (6, 5)),
        covers=("RealNVP",),
    ),
    "RealNVP-reverse-additive": Case(
        lambda: nux.RealNVP(n_layers=2, hidden_layer_sizes=(8,), kind="additive", permutation="reverse"),
        covers=("RealNVP",),
    ),
    "RealNVP-unrolled": Case(
        lambda: nux.RealNVP(n_layers=2, hidden_layer_sizes=(8,), scan=False),
        lambda k: jr.normal(k, (6, 5)),
        covers=("RealNVP",),
    ),
    "RealNVP-checkerboard": Case(  # 3 layers: a scanned pair, then one
        lambda: nux.RealNVP(n_layers=3, n_channels=8, mask="checkerboard"),
        lambda k: jr.normal(k, (6, 4, 4, 1)),
        covers=("RealNVP",),
    ),
    "RealNVP-dequantize": Case(
        lambda: nux.RealNVP(n_layers=1, n_channels=8, mask="checkerboard", dequantize=17),
        lambda k: jr.randint(k, (6, 2, 2, 1), 0, 17).astype("float32"),
        covers=("RealNVP",),
    ),
    "MaskedAutoregressiveFlow": Case(
        lambda: nux.MaskedAutoregressiveFlow(n_layers=2, hidden_layer_sizes=(8,)),
        lambda k: jr.normal(k, (6, 3)),
        covers=("MaskedAutoregressiveFlow",),
    ),
    "NeuralSplineFlow": Case(
        lambda: nux.NeuralSplineFlow(n_layers=2, hidden_layer_sizes=(8,), K=4),
        lambda k: jr.normal(k, (6, 3)),
        covers=("NeuralSplineFlow",),
    ),
}
