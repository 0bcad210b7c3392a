"""Registry cases: coupling masks, `ConditionedCoupling` and the scan-over-layers `Repeat`."""

import jax.random as jr
from cases import BATCH, Case

import nux_eqx as nux

SMALL = dict(hidden_layer_sizes=(8,))


def _cond_vector(key):
    return jr.normal(key, (BATCH, 3))


def _cond_pytree(key):
    k1, k2 = jr.split(key)
    return {"map": jr.normal(k1, (BATCH, 4, 4, 1)), "vec": jr.normal(k2, (BATCH, 2))}


def _cond_pytree_vector(key):
    k1, k2 = jr.split(key)
    return {"a": jr.normal(k1, (BATCH, 2)), "b": jr.normal(k2, (BATCH, 2, 2))}


def _glow_block():
    return nux.Sequential(nux.ActNorm(), nux.OneByOneConv(), nux.Coupling(n_channels=8))


CASES = {
    "Coupling-channel": Case(
        lambda: nux.Coupling(n_channels=8, mask="channel"), "image", covers=("Coupling",)
    ),
    "Coupling-checkerboard": Case(
        lambda: nux.Coupling(n_channels=8, mask="checkerboard"), "image", covers=("Coupling",)
    ),
    "Coupling-checkerboard-additive-parity1": Case(
        lambda: nux.Coupling(kind="additive", n_channels=8, mask="checkerboard", parity=1),
        lambda k: jr.normal(k, (BATCH, 4, 4, 1)),
        covers=("Coupling",),
    ),
    "ConditionedCoupling-vector": Case(
        lambda: nux.ConditionedCoupling(**SMALL), cond=_cond_vector, covers=("ConditionedCoupling",)
    ),
    # A transformer with a non-zero initial parameter (softplus scale), conditional because
    # `init` gets a cond.
    "Coupling-softplus-cond": Case(
        lambda: nux.Coupling(nux.ElementwiseAffine(scale="softplus"), **SMALL),
        cond=_cond_pytree_vector,
        covers=("Coupling", "ElementwiseAffine"),
    ),
    # An odd size with the old split (floor(5/2) = 2 transformed; the default changes 3), and
    # FlowJAX's affine map (the scale as a multiplier, bounded below).
    "Coupling-odd-floor-split-inverse-softplus": Case(
        lambda: nux.Coupling(nux.ElementwiseAffine("inverse_softplus"), split="floor", **SMALL),
        lambda k: jr.normal(k, (BATCH, 5)),
        covers=("Coupling", "ElementwiseAffine"),
    ),
    "ConditionedCoupling-vector-additive": Case(
        lambda: nux.ConditionedCoupling(kind="additive", **SMALL),
        lambda k: jr.normal(k, (BATCH, 5)),
        cond=_cond_vector,
        covers=("ConditionedCoupling",),
    ),
    "ConditionedCoupling-image": Case(
        lambda: nux.ConditionedCoupling(n_channels=8),
        "image",
        cond=_cond_pytree,
        covers=("ConditionedCoupling",),
    ),
    "ConditionedCoupling-checkerboard": Case(
        lambda: nux.ConditionedCoupling(n_channels=8, mask="checkerboard", parity=1),
        lambda k: jr.normal(k, (BATCH, 4, 4, 1)),
        cond=_cond_vector,
        covers=("ConditionedCoupling",),
    ),
    "Repeat-vector": Case(
        lambda: nux.Sequential(
            nux.Repeat(nux.Sequential(nux.ActNorm(), nux.Coupling(**SMALL), nux.Reverse()), 3),
            nux.UnitGaussianPrior(),
        ),
        covers=("Repeat",),
    ),
    "Repeat-image": Case(lambda: nux.Repeat(_glow_block(), 2), "image"),
    "Repeat-conditioned": Case(
        lambda: nux.Repeat(nux.Sequential(nux.ConditionedCoupling(**SMALL), nux.Reverse()), 2),
        cond=_cond_vector,
        covers=("Repeat", "ConditionedCoupling"),
    ),
    "MultiscaleGlow-repeat": Case(
        lambda: nux.MultiscaleGlow(n_levels=1, n_blocks=2, n_channels=8, repeat=True),
        lambda k: jr.normal(k, (BATCH, 2, 2, 1)),
        covers=("MultiscaleGlow", "Repeat"),
    ),
}
