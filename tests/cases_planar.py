"""Registry cases: planar and radial flows (issue 19)."""

import jax.random as jr
from cases import Case

import nux_eqx as nux

CASES = {
    # direction="sample" (default): the forward pass (checked here) root-finds.
    "Planar": Case(lambda: nux.Planar()),
    "Radial": Case(lambda: nux.Radial()),
    # direction="density": the closed-form maps run forward; 2-D, as in VI targets
    "Planar-Radial-density": Case(
        lambda: nux.Sequential(nux.Planar("density"), nux.Radial("density")),
        lambda k: jr.normal(k, (6, 2)),
        covers=("Planar", "Radial"),
    ),
}
