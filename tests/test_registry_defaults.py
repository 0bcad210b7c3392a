"""Every public flow has a `check_flow` case at its DEFAULT constructor in
`tests/cases_defaults.py` (issue 16: hand-picked small configurations hid defaults that
fail check_flow). The cases themselves run in `tests/test_registry.py` (`-k defaults`)."""

import dataclasses
import inspect

import cases_defaults
import equinox as eqx
import jax.random as jr
import pytest
from cases import data_of
from test_registry import _public_flows

import nux_eqx as nux
from nux_eqx.testing import check_flow


def _modules(tree):
    """Every flow in `tree` (itself included), depth first."""
    out = []

    def walk(v):
        if isinstance(v, nux.AbstractFlow):
            out.append(v)
            for f in dataclasses.fields(v):
                walk(getattr(v, f.name, None))
        elif isinstance(v, list | tuple):
            for u in v:
                walk(u)
        elif isinstance(v, dict):
            for u in v.values():
                walk(u)

    walk(tree)
    return out


def _default(obj):
    """`obj()`, or `None` where the constructor needs an argument (a required parameter,
    or a container's layers)."""
    params = inspect.signature(obj).parameters.values()
    if any(
        p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in params
    ):
        return None
    try:
        return obj()
    except (TypeError, ValueError):
        return None


def test_every_public_flow_has_a_defaults_case():
    covered = set()
    for case in (*cases_defaults.CASES.values(), *cases_defaults.KNOWN_DEFECTS.values()):
        covered.add(type(case.make()).__name__)
        covered.update(case.covers)
    missing = sorted(_public_flows() - covered)
    assert not missing, f"public flows with no default-constructor case in tests/cases_defaults.py: {missing}"


def test_defaults_cases_use_the_default_constructors():
    """Where a public flow can be built with no argument, its case holds exactly
    `Layer()` (compared as pytrees, static fields included)."""
    every = (*cases_defaults.CASES.values(), *cases_defaults.KNOWN_DEFECTS.values())
    built = [_modules(case.make()) for case in every]
    wrong = []
    for name in sorted(_public_flows()):
        obj = getattr(nux, name)
        ref = _default(obj)
        if ref is None:
            continue
        if not any(eqx.tree_equal(m, ref) is True for mods in built for m in mods):
            wrong.append(name)
    assert not wrong, f"tests/cases_defaults.py builds these public flows with non-default arguments: {wrong}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(cases_defaults.KNOWN_DEFECTS))
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="known defect at the default constructor")
def test_known_defects_still_fail(name):
    case = cases_defaults.KNOWN_DEFECTS[name]
    k_data, k_cond, k_check = jr.split(jr.key(sum(map(ord, name))), 3)
    x = data_of(case, k_data)
    cond = None if case.cond is None else case.cond(k_cond)
    check_flow(case.make(), x, key=k_check, cond_batch=cond)
