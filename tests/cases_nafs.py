"""Registry cases: neural autoregressive flows (the block neural autoregressive flow and the
deep sigmoidal transformer, alone, in MaskedAutoregressive and in Coupling, with and without
cond, on vectors and images)."""

import jax.random as jr
from cases import BATCH, Case

import nux_eqx as nux

H = dict(hidden_layer_sizes=(16, 16))


def _wide(key):
    """(6, 4) vectors with a few large entries, for the bisection inverses."""
    return 2.5 * jr.normal(key, (BATCH, 4))


def _cond3(key):
    return jr.normal(key, (BATCH, 3))


CASES = {
    # Standard-normal data: in the flat tails (slopes ~ leak) float32 limits the inverse
    # to ~1e-7 |z| / slope, above check_flow's 1e-5 (see the docstring; test_bnaf.py
    # tests the tails with their own bound).
    "BlockAutoregressiveNetwork": Case(lambda: nux.BlockAutoregressiveNetwork(depth=2, block_dim=3)),
    "BNAF-cond-depth0": Case(lambda: nux.BNAF(depth=0), cond=_cond3, covers=("BNAF",)),
    "BNAF-cond": Case(lambda: nux.BNAF(depth=1, block_dim=4, leak=0.0), cond=_cond3, covers=("BNAF",)),
    "DeepSigmoidal": Case(lambda: nux.DeepSigmoidal(K=4), _wide),
    "MaskedAutoregressive-DeepSigmoidal": Case(
        lambda: nux.MaskedAutoregressive(nux.DeepSigmoidal(K=3), ordering="random", **H),
        _wide,
        covers=("MaskedAutoregressive", "DeepSigmoidal"),
    ),
    "MaskedAutoregressive-DeepSigmoidal-cond": Case(
        lambda: nux.MaskedAutoregressive(nux.DeepSigmoidal(K=3), **H),
        cond=_cond3,
        covers=("MaskedAutoregressive", "DeepSigmoidal"),
    ),
    "Coupling-DeepSigmoidal-cond": Case(
        lambda: nux.Coupling(nux.DeepSigmoidal(K=3), hidden_layer_sizes=(8,)),
        _wide,
        cond=_cond3,
        covers=("Coupling", "DeepSigmoidal"),
    ),
    "Coupling-DeepSigmoidal-image": Case(
        lambda: nux.Coupling(nux.DeepSigmoidal(K=2), n_channels=8, mask="checkerboard"),
        "image",
        covers=("Coupling", "DeepSigmoidal"),
    ),
}
