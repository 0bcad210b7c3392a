"""`LeanJit`: `eqx.filter_jit`'s semantics for training steps, with less host work per call.

A training step is dispatched thousands of times with the same flow structure. `eqx.filter_jit`
partitions every argument and hashes the static part (the modules themselves) on each
call, ~0.5-2 ms for a flow of a few dozen layers: as much as the whole step of a small MLP
flow on a CPU. Here each positional argument is flattened once (`jax.tree.flatten`, in C++),
its arrays become the jitted function's dynamic inputs, and everything else (the treedef
and the non-array leaves, which must be hashable) keys a cache of `jax.jit`-compiled
functions. `donate` is `"none"` or `"all-except-first"`, as in `eqx.filter_jit`.

Assumption (true for the training steps here): the non-array leaves of the output depend
only on the non-array leaves and treedefs of the inputs, not on array shapes.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax

from .._compile import LEAN_CPU_COMPILE as LEAN_CPU_COMPILE
from .._compile import auto_compiler_options as auto_compiler_options
from .._compile import example_ndim as example_ndim
from .._compile import filter_jit_with as filter_jit_with


def _split(tree: Any):
    leaves, treedef = jax.tree.flatten(tree)
    mask = tuple(eqx.is_array(leaf) for leaf in leaves)
    dynamic = [leaf for leaf, m in zip(leaves, mask) if m]
    static = tuple(leaf for leaf, m in zip(leaves, mask) if not m)
    return dynamic, (treedef, mask, static)


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def _merge(dynamic: Sequence, spec) -> Any:
    treedef, mask, static = spec
    dyn, stat = iter(dynamic), iter(static)
    return jax.tree.unflatten(treedef, [next(dyn) if m else next(stat) for m in mask])


AUTO = "auto"


def check_compiler_options(owner: str, options: Any) -> dict | str | None:
    """`options` as a dict, `"auto"`, or `None` for XLA's defaults, refusing what `jax.jit`
    would not take."""
    if options is None:
        return None
    if isinstance(options, str):
        if options == AUTO:
            return AUTO
        raise ValueError(
            f"{owner}: `compiler_options` must be 'auto', a dict of XLA options, or None; got {options!r}."
        )
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise TypeError(
            f"{owner}: `compiler_options` must be 'auto' (the default), a dict of XLA option names to "
            f"values, as for `jax.jit(..., compiler_options=...)` (e.g. "
            f"{{'xla_cpu_use_fusion_emitters': False}}), or None (XLA's defaults); got "
            f"{type(options).__name__}."
        )
    return dict(options) or None


def resolve_compiler_options(options: dict | str | None, ndim: int | None) -> dict | None:
    """`options` with `"auto"` replaced by [`auto_compiler_options`][] for examples of rank `ndim`."""
    return auto_compiler_options(ndim) if options == AUTO else options


class LeanJit:
    """`fn(*args)` compiled per (structure, static leaves) of its positional arguments,
    with `jax.jit`'s `compiler_options` (`None`: XLA's defaults)."""

    def __init__(self, fn: Callable, donate: str = "none", compiler_options: dict | None = None):
        if donate not in ("none", "all-except-first"):
            raise ValueError(f"LeanJit: donate must be 'none' or 'all-except-first', got {donate!r}.")
        self._fn = fn
        self._donate = donate
        self._compiler_options = compiler_options
        self._cache: dict = {}

    def _compile(self, specs):
        out_spec: list = []

        def run(*dynamic):
            args = [_merge(d, s) for d, s in zip(dynamic, specs)]
            out = self._fn(*args)
            out_dynamic, spec = _split(out)
            out_spec[:] = [spec]
            return out_dynamic

        donate_argnums = tuple(range(1, len(specs))) if self._donate == "all-except-first" else ()
        return jax.jit(run, donate_argnums=donate_argnums, compiler_options=self._compiler_options), out_spec

    def __call__(self, *args: Any) -> Any:
        parts = [_split(a) for a in args]
        specs = tuple(spec for _, spec in parts)
        try:
            entry = self._cache.get(specs)
        except TypeError as e:
            bad = [type(v).__name__ for _, (_, _, st) in parts for v in st if not _hashable(v)]
            raise TypeError(
                f"A non-array leaf of the training state is not hashable ({', '.join(bad)}): compiled "
                "steps treat non-array leaves as compile-time constants, so they must be hashable (as "
                "for `eqx.filter_jit`). Make it an array, or hashable."
            ) from e
        if entry is None:
            entry = self._cache[specs] = self._compile(specs)
        compiled, out_spec = entry
        out_dynamic = compiled(*[d for d, _ in parts])
        return _merge(out_dynamic, out_spec[0])
