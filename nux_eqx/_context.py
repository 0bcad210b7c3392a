"""Trace-time flags, all in one place: `ContextVar`s that a `with` block sets while a
function is traced, and the context managers that set them.

- `CHECK_FINITE` ([`nux_eqx.check_finite`][]): every layer call checks its values.
- `RECORDER` / `CAPTURE_PATH` ([`nux_eqx.capture`][]): leaf layers append what they saw;
  containers name their children with `child_scope`.
- `ONLY_UNINITIALISED` (`nux_eqx.init(..., only_uninitialised=True)`): layers that are
  already initialised keep their parameters.
- `LOOP_BODY` ([`nux_eqx.nn.loop_body`][]): the code is the body of a loop, so
  `nux_eqx.nn.Conv2d` uses its loop-friendly form on CPU.

They are read when a function is traced, so they select the form of the compiled code.
"""

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

CHECK_FINITE: contextvars.ContextVar[bool] = contextvars.ContextVar("nux_eqx_check_finite", default=False)
RECORDER: contextvars.ContextVar[list | None] = contextvars.ContextVar("nux_eqx_recorder", default=None)
CAPTURE_PATH: contextvars.ContextVar[str] = contextvars.ContextVar("nux_eqx_path", default="")
LOOP_BODY: contextvars.ContextVar[bool] = contextvars.ContextVar("nux_eqx_loop_body", default=False)
ONLY_UNINITIALISED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "nux_eqx_only_uninitialised", default=False
)


@contextlib.contextmanager
def set_flag(var: contextvars.ContextVar, value: Any) -> Iterator[None]:
    """Set `var` to `value` for the duration of the `with` block."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


@contextlib.contextmanager
def check_finite(enabled: bool = True) -> Iterator[None]:
    """Raise, inside `jit` too, when a layer receives or produces NaN or inf.

    Within this context every layer call checks its input, its output and its
    contribution with `eqx.error_if`, and the error names the first layer where a
    non-finite value appeared. The setting is read when a function is traced: enter the
    context around the first call of a jitted step (or around the code that traces it):
    a step compiled before keeps running without the checks, one traced inside keeps them.
    It costs a reduction per layer, so it is off by default; turn it on to find the layer
    behind a NaN loss.

    ```python
    import jax
    import jax.numpy as jnp
    import nux_eqx

    x = jax.random.normal(jax.random.key(0), (16, 2))
    flow = nux_eqx.init(nux_eqx.Sequential(nux_eqx.ActNorm(), nux_eqx.UnitGaussianPrior()),
                        x, key=jax.random.key(1))
    bad = x.at[3, 0].set(jnp.nan)
    with nux_eqx.check_finite():
        try:
            z, log_px = jax.jit(jax.vmap(flow))(bad)
        except Exception as e:          # an XlaRuntimeError / EquinoxRuntimeError
            print(str(e).splitlines()[0])   # names the first layer that saw a NaN
    ```
    """
    with set_flag(CHECK_FINITE, enabled):
        yield


def capturing() -> bool:
    """**Returns:** whether a [`nux_eqx.capture`][] is in progress.

    Containers that would hide their children inside a `lax.scan` (such as `Repeat`)
    run an unrolled loop instead while capturing."""
    return RECORDER.get() is not None


@contextlib.contextmanager
def child_scope(name: str) -> Iterator[None]:
    """Name the child a container is about to call, for [`nux_eqx.capture`][] paths.

    Containers wrap each call to a child in `with child_scope("layers[0]"):`. Outside a
    capture this only costs a context-variable lookup at trace time."""
    if RECORDER.get() is None:
        yield
        return
    parent = CAPTURE_PATH.get()
    with set_flag(CAPTURE_PATH, f"{parent}.{name}" if parent else name):
        yield


@contextlib.contextmanager
def loop_body() -> Iterator[None]:
    """A context manager: trace the enclosed code as the body of a loop.

    On the CPU backend, [`nux_eqx.nn.Conv2d`][] then computes its convolution as a matmul
    over image patches (im2col), whose gradients XLA:CPU runs fast inside a loop (its
    convolution weight gradient is ~100x slower there). The result is the same
    convolution. [`nux_eqx.Repeat`][] traces its scanned blocks in it; use it in your own
    `lax.scan` over layers that hold `Conv2d`s:

    <!-- not-run: a sketch; body, carry and stacked_params are yours -->
    ```python
    with nux.nn.loop_body():
        carry, _ = jax.lax.scan(body, carry, stacked_params)
    ```
    """
    with set_flag(LOOP_BODY, True):
        yield
