"""The check_flow registry: every public layer and container, with fixed small shapes.

Each family of layers has its own module `tests/cases_<family>.py` that defines
`CASES: dict[str, Case]`; `all_cases()` merges them. Keep shapes small and fixed (each new
shape recompiles) so the whole registry fits the CI budget.
"""

import dataclasses
import importlib
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr


@dataclasses.dataclass(frozen=True)
class Case:
    """One registry entry.

    - `make`: builds the (un-initialised) flow.
    - `data`: a function `key -> x_batch`, or the name of a standard batch below.
    - `cond`: optional `key -> cond_batch`.
    - `covers`: the public names this case exercises (defaults to the flow's class name).
    - `slow`: run only with `-m slow` (large compiled graphs whose parts have cases of their own).
    - `max_scramble`: the largest parameter noise the drawn-scale property test and
      `test_registry`'s `check_flow` (0.1 otherwise) add (None: no limit), for a flow whose maps are unbounded by design, where larger noise on its
      default widths overflows float32, or whose bounded parameters saturate at extremes
      beyond float32's precision (numerical facts about such weights, not defects; the case
      says which and at what noise it was measured).
    """

    make: Callable
    data: str | Callable = "vector"
    cond: Callable | None = None
    covers: tuple[str, ...] = ()
    slow: bool = False
    max_scramble: float | None = None


def params(cases: dict, only: Callable[[str], bool] | None = None) -> list:
    """`pytest.param`s of the case names, the `slow` ones marked `slow` (run with
    `-m slow`; excluded from the default run to keep CI within its budget). With `only`,
    the names it rejects are marked `slow` too."""
    import pytest

    def slow(n):
        return cases[n].slow or (only is not None and not only(n))

    return [pytest.param(n, marks=pytest.mark.slow) if slow(n) else n for n in sorted(cases)]


BATCH = 6


def vector(key):
    """(6, 4) standard normal vectors."""
    return jr.normal(key, (BATCH, 4))


def unit_vector(key):
    """(6, 4) vectors inside (0, 1) (softmax-like), for Logit-type layers."""
    return jax.nn.softmax(jr.normal(key, (BATCH, 4)), axis=-1) * 0.9 + 0.05


def image(key):
    """(6, 4, 4, 2) standard normal images."""
    return jr.normal(key, (BATCH, 4, 4, 2))


def unit_image(key):
    """(6, 4, 4, 2) images inside (0, 1)."""
    return jr.uniform(key, (BATCH, 4, 4, 2), minval=0.05, maxval=0.95)


def levels_image(key):
    """(6, 4, 4, 2) images of integer levels 0..16 (as floats), for dequantisation."""
    return jnp.floor(jr.uniform(key, (BATCH, 4, 4, 2)) * 17)


STANDARD = {
    "vector": vector,
    "unit_vector": unit_vector,
    "image": image,
    "unit_image": unit_image,
    "levels_image": levels_image,
}


def data_of(case: Case, key):
    fn = STANDARD[case.data] if isinstance(case.data, str) else case.data
    return fn(key)


def all_cases() -> dict[str, Case]:
    out: dict[str, Case] = {}
    for path in sorted(pathlib.Path(__file__).parent.glob("cases_*.py")):
        mod = importlib.import_module(path.stem)
        for name, case in mod.CASES.items():
            if name in out:
                raise ValueError(f"duplicate registry case {name!r} in {path.name}")
            out[name] = case
    return out
