"""Registry cases: the noisy injective flows (NIF) and `importance_weighted` (issue 7).

check_flow checks the NIF layers in their deterministic mode (no key: the exact injective
map), and the `ImportanceWeighted` container with a key (its NIF and prior leaves are
checked per sample)."""

import jax.random as jr
from cases import Case

import nux_eqx as nux

CASES = {
    "TallAffineDiagCov": Case(lambda: nux.TallAffineDiagCov(2)),
    "TallAffineDiagCov-prior": Case(
        lambda: nux.Sequential(nux.TallAffineDiagCov(3), nux.UnitGaussianPrior()),
        covers=("TallAffineDiagCov",),
    ),
    "CouplingTallAffineDiagCov": Case(
        lambda: nux.CouplingTallAffineDiagCov(3, hidden_layer_sizes=(8,)), lambda k: jr.normal(k, (6, 5))
    ),
    "CouplingTallAffineDiagCov-split": Case(
        lambda: nux.CouplingTallAffineDiagCov(2, kind="split", hidden_layer_sizes=(8,)),
        covers=("CouplingTallAffineDiagCov",),
    ),
    "UpSample": Case(lambda: nux.UpSample(), "image"),
    "UpSample-channels": Case(lambda: nux.UpSample((2, 1, 2)), "image", covers=("UpSample",)),
    "CouplingUpSample": Case(lambda: nux.CouplingUpSample(n_channels=8), "image"),
    "ImportanceWeighted": Case(
        lambda: nux.importance_weighted(
            nux.TallAffineDiagCov(2),
            nux.Sequential(nux.Coupling(hidden_layer_sizes=(8,)), nux.UnitGaussianPrior()),
            n_samples=2,
        ),
        covers=("ImportanceWeighted", "importance_weighted"),
    ),
}
