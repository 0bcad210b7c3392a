"""Every public layer and container goes through check_flow."""

import jax.random as jr
import pytest
from cases import all_cases, data_of, params

import nux_eqx as nux
from nux_eqx.testing import check_flow

CASES = all_cases()


@pytest.mark.parametrize("name", params(CASES))
def test_check_flow(name):
    case = CASES[name]
    k_data, k_cond, k_check = jr.split(jr.key(sum(map(ord, name))), 3)
    x = data_of(case, k_data)
    cond = None if case.cond is None else case.cond(k_cond)
    # a case that holds only up to `max_scramble` (its reason is written at the case) is
    # scrambled with that noise instead of check_flow's 0.1
    scale = 0.1 if case.max_scramble is None else min(0.1, case.max_scramble)
    check_flow(case.make(), x, key=k_check, cond_batch=cond, scramble_scale=scale)


def _public_flows():
    names = set()
    for name in nux.__all__:
        obj = getattr(nux, name)
        if isinstance(obj, type) and issubclass(obj, nux.AbstractFlow) and not name.startswith("Abstract"):
            names.add(name)
        elif callable(obj) and getattr(obj, "__nux_builder__", False):
            names.add(name)
    return names


def test_registry_covers_every_public_flow():
    covered = set()
    for case in CASES.values():
        covered.add(type(case.make()).__name__)
        covered.update(case.covers)
    missing = sorted(_public_flows() - covered)
    assert not missing, f"public flows with no check_flow case in tests/cases_*.py: {missing}"
