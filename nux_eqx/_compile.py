"""How nux_eqx compiles the programs it builds itself: the CPU preset that compiles for
memory, the `"auto"` rule that picks it, and one `eqx.filter_jit` wrapper per option set.

Core (not `train`): `init` outside jit compiles each layer with these options too."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax

LEAN_CPU_COMPILE: dict[str, Any] = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
"""XLA options that compile for memory on CPU, what `compiler_options="auto"` (the default of
[`make_step`][nux_eqx.train.make_step] and [`fit`][nux_eqx.train.fit]) uses for images on
CPU; pass them yourself for other data, or to `jax.jit`.

`{"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}`: XLA:CPU's
older loop-fusion emitters and fewer LLVM optimisations. For the digits `MultiscaleGlow`
(`benchmarks/glow_digits.py`) the process's peak memory fell from 753 to 537 MB; steps
were 0-10 % slower in interleaved timings on 8x8 digits and as fast at 28x28 (the same
numbers up to float rounding). For CPU only: the optimisation level applies to every
backend, so on a GPU leave `compiler_options` at `"auto"` or `None`. Small MLP flows
compile cheaply anyway and step 2-8 % faster without it.
"""


def auto_compiler_options(example_ndim: int | None) -> dict | None:
    """What `compiler_options="auto"` compiles with: [`LEAN_CPU_COMPILE`][nux_eqx.train.LEAN_CPU_COMPILE]
    for examples of rank 3 or more (images) when JAX's default backend is the CPU, else
    `None` (XLA's defaults).

    Why: on XLA:CPU the fusion emitters hold most of a convolutional flow's compile memory
    and buy it no speed worth the memory (digits `MultiscaleGlow`, interleaved steps: 0-10 %
    slower with the preset, 28x28: the same; peak memory of the benchmark job 753 -> 537 MB),
    while small vector flows compile cheaply anyway and step 2-8 % faster with XLA's defaults.
    """
    if example_ndim is not None and example_ndim >= 3 and jax.default_backend() == "cpu":
        return dict(LEAN_CPU_COMPILE)
    return None


def example_ndim(tree: Any, batch_axes: int) -> int | None:
    """The rank of one example of the batched arrays in `tree` (the largest over its leaves),
    or `None` when it has no arrays."""
    ranks = [leaf.ndim for leaf in jax.tree.leaves(tree) if hasattr(leaf, "ndim")]
    return max(ranks) - batch_axes if ranks else None


_FILTER_JITS: dict = {}


def filter_jit_with(fn: Callable, compiler_options: dict | None) -> Callable:
    """`eqx.filter_jit(fn, compiler_options=...)`, one wrapper (and so one compilation cache)
    per function and set of options."""
    try:
        k = (fn, tuple(sorted((compiler_options or {}).items())))
        hash(k)
    except TypeError:  # an unhashable option value: a wrapper of its own
        return eqx.filter_jit(fn, compiler_options=compiler_options)
    if k not in _FILTER_JITS:
        _FILTER_JITS[k] = eqx.filter_jit(fn, compiler_options=compiler_options)
    return _FILTER_JITS[k]
