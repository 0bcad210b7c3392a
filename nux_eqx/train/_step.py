"""`make_step`: one compiled training step (or a `lax.scan` of several) for any optax optimizer."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._flow import AbstractFlow, trainable
from ..bijective._residual import update_spectral_state
from ..nn._spectral import update_spectral_norm
from ._jit import LeanJit, check_compiler_options, example_ndim, resolve_compiler_options
from ._losses import nll


def _all_finite(tree: PyTree) -> Array:
    leaves = [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(tree) if eqx.is_inexact_array(g)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def update(
    flow: AbstractFlow,
    opt_state: PyTree,
    x: Any,
    key: PRNGKeyArray | None,
    cond: PyTree,
    ok: Array,
    *,
    optimizer: optax.GradientTransformation,
    loss: Callable,
) -> tuple[AbstractFlow, PyTree, Array, Array]:
    """One optimisation step, traceable. An update whose loss or gradient is not finite is
    skipped (parameters and optimizer state stay as they were) and `ok` turns `False`;
    while `ok` is `False` no update is applied, so the state stays the last good one.

    **Returns:** `(flow, opt_state, loss_value, ok)`.
    """
    params, static = trainable(flow)

    def f(p):
        return loss(eqx.combine(p, static), x, key=key, cond=cond)

    value, grads = jax.value_and_grad(f)(params)
    updates, new_opt = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    ok = ok & jnp.isfinite(value) & _all_finite(grads)
    # One conditional, not a `where` per leaf: the same result, and on XLA:CPU the compile
    # of a digits Glow step peaks ~140 MB lower (a select on every parameter and moment
    # roughly doubled what compiling the optimiser's update costs).
    params, opt_state = jax.lax.cond(ok, lambda: (new_params, new_opt), lambda: (params, opt_state))
    return advance_power_iterations(eqx.combine(params, static)), opt_state, value, ok


def advance_power_iterations(flow: PyTree) -> PyTree:
    """One power-iteration step, on the current weights, for every spectrally normalised
    layer's stored vector (`ResidualFlow`'s and `nux_eqx.nn.SpectralNorm`'s), as NuX
    updated its state after every optimiser step; a no-op for flows without such layers.
    Without it the vectors stay where `init` left them while the weights move, and each
    call's few iterations start further and further from the top singular vector."""
    return update_spectral_state(update_spectral_norm(flow), n_iterations=1)


def scan_updates(
    flow: AbstractFlow,
    opt_state: PyTree,
    xs: Any,
    keys: PRNGKeyArray | None,
    conds: PyTree,
    ok: Array,
    *,
    optimizer: optax.GradientTransformation,
    loss: Callable,
) -> tuple[AbstractFlow, PyTree, Array, Array]:
    """`k` steps in one `lax.scan`: `xs`, `keys` and `conds` have a leading axis `k`.

    **Returns:** `(flow, opt_state, losses (k,), ok)`.
    """
    arrays, static = eqx.partition(flow, eqx.is_array)

    def body(carry, inp):
        f_arr, opt, good = carry
        x, k, c = inp
        f, opt, value, good = update(
            eqx.combine(f_arr, static), opt, x, k, c, good, optimizer=optimizer, loss=loss
        )
        return (eqx.partition(f, eqx.is_array)[0], opt, good), value

    (arrays, opt_state, ok), values = jax.lax.scan(body, (arrays, opt_state, ok), (xs, keys, conds))
    return eqx.combine(arrays, static), opt_state, values, ok


class TrainStep:
    """A compiled training step, made by [`make_step`][].

    `step(flow, opt_state, x, *, key, cond=None) -> (flow, opt_state, loss)`.

    The flow's and the optimizer state's buffers are DONATED (reused for the outputs) when
    `donate=True`: do not use the `flow` / `opt_state` you passed in after the call (copy
    with `jax.tree.map(jnp.copy, flow)` what you want to keep). The batch is not donated.
    """

    def __init__(
        self,
        optimizer: optax.GradientTransformation,
        loss: Callable,
        steps_per_dispatch: int,
        donate: bool,
        compiler_options: dict | str | None = "auto",
    ):
        self.optimizer = optimizer
        self.loss = loss
        self.steps_per_dispatch = steps_per_dispatch
        k = steps_per_dispatch

        def run(data, flow, opt_state):
            x, key, cond = data
            ok = jnp.asarray(True)
            if k == 1:
                flow, opt_state, value, _ = update(
                    flow, opt_state, x, key, cond, ok, optimizer=optimizer, loss=loss
                )
            else:
                keys = None if key is None else jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(k))
                flow, opt_state, value, _ = scan_updates(
                    flow, opt_state, x, keys, cond, ok, optimizer=optimizer, loss=loss
                )
            return flow, opt_state, value

        self._fn = run
        self._donate = "all-except-first" if donate else "none"
        self._options = compiler_options
        self._batch_axes = 1 if k == 1 else 2
        # one LeanJit per example rank: the rank fixes the options, and batches of another
        # rank have other shapes, so they compile anew whatever the cache
        self._by_ndim: dict = {}

    def _jit_for(self, x: Any) -> LeanJit:
        """The compiled step for `x`'s example rank (which `"auto"` picks the options by)."""
        ndim = example_ndim(x, self._batch_axes)
        if ndim not in self._by_ndim:
            opts = resolve_compiler_options(self._options, ndim)
            self._by_ndim[ndim] = LeanJit(self._fn, donate=self._donate, compiler_options=opts)
        return self._by_ndim[ndim]

    def init(self, flow: AbstractFlow) -> PyTree:
        """**Returns:** the optimizer state for the trainable arrays of `flow`."""
        return self.optimizer.init(trainable(flow)[0])

    def __call__(
        self,
        flow: AbstractFlow,
        opt_state: PyTree,
        x: Any,
        *,
        key: PRNGKeyArray | None = None,
        cond: PyTree = None,
    ) -> tuple[AbstractFlow, PyTree, Array]:
        """Run `steps_per_dispatch` optimisation steps.

        **Arguments:**

        - `flow`: the initialised flow (donated).
        - `opt_state`: from `step.init(flow)` or the previous call (donated).
        - `x`: a batch (one leading axis); with `steps_per_dispatch = k > 1`, `k` stacked
          batches `(k, batch, ...)`. `None` for losses that need no data (reverse KL).
        - `key`: the step's key (split or folded inside; `k` steps use `fold_in(key, i)`).
        - `cond`: batched conditioning, stacked like `x`, or `None`.

        **Returns:** `(flow, opt_state, loss)`; `loss` has shape `(k,)` when `k > 1`. A
        step whose loss or gradient is not finite leaves the flow and optimizer state
        unchanged (the returned loss shows the non-finite value).
        """
        return self._jit_for(x)((x, key, cond), flow, opt_state)


def make_step(
    optimizer: optax.GradientTransformation | None = None,
    loss: Callable = nll,
    *,
    steps_per_dispatch: int = 1,
    donate: bool = True,
    compiler_options: dict | str | None = "auto",
) -> TrainStep:
    """Build a jitted training step (compiled once per flow structure, with buffer donation).

    Only the trainable arrays are optimised ([`nux_eqx.trainable`][]: `NonTrainable`
    arrays are skipped).

    <!-- not-run: a sketch; flow, batches and key are yours (a runnable loop is in the fit tutorial) -->
    ```python
    step = nux.train.make_step(optax.adam(1e-3))
    opt_state = step.init(flow)
    for i, x in enumerate(batches):
        flow, opt_state, loss = step(flow, opt_state, x, key=jax.random.fold_in(key, i))
    ```

    **Arguments:**

    - `optimizer`: any optax transformation (default `optax.adam(1e-3)`).
    - `loss`: `loss(flow, x_batch, *, key, cond) -> scalar` (default [`nll`][]; see also
      [`importance_weighted_nll`][], [`reverse_kl_loss`][]).
    - `steps_per_dispatch`: run this many steps per call inside a `lax.scan` (the batch
      then has a leading axis of that size). On XLA:CPU this helps small MLP flows (less
      dispatch overhead) and can badly slow convolutional ones; the default 1 is a plain
      compiled step.
    - `donate`: donate the flow's and optimizer state's buffers (default `True`).
    - `compiler_options`: XLA options for compiling the step, as `jax.jit` takes them; `None`
      for XLA's defaults. The default `"auto"` compiles steps on images (examples of rank 3
      or more) with [`LEAN_CPU_COMPILE`][nux_eqx.train.LEAN_CPU_COMPILE] when JAX runs on
      the CPU, and everything else with XLA's defaults
      ([`auto_compiler_options`][nux_eqx.train.auto_compiler_options] says why).

    **Returns:** a [`TrainStep`][]: `step(flow, opt_state, x, *, key, cond=None)`.
    """
    if optimizer is None:
        optimizer = optax.adam(1e-3)
    if int(steps_per_dispatch) < 1:
        raise ValueError(f"make_step: steps_per_dispatch must be >= 1, got {steps_per_dispatch}.")
    compiler_options = check_compiler_options("make_step", compiler_options)
    return TrainStep(optimizer, loss, int(steps_per_dispatch), donate, compiler_options)
