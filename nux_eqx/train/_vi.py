r"""Variational inference: fit a flow to an unnormalised log-density.

Given `log p~(x) = log p(x) + log Z` (known up to the constant `log Z`), the flow `q` is
trained to minimise the reverse KL,
`KL(q || p) = E_q[log q(x) - log p~(x)] + log Z`, i.e. to maximise the evidence lower
bound `ELBO = E_q[log p~(x) - log q(x)] <= log Z`. The expectation is estimated with
reparameterised samples `x = flow^-1(z)`, `z ~ prior` ([`reverse_kl`][]), so only the
flow's REVERSE pass (latent -> data) and its contribution are used. Pick layers that are
cheap in that direction: couplings are cheap both ways; [`nux_eqx.Planar`][] and
[`nux_eqx.Radial`][] with their default `direction="sample"` are closed-form there and
never root-find; a `MAF`'s reverse pass is sequential (`dim` passes per layer).

After training, `log Z` is estimated by importance sampling with the flow as the
proposal ([`importance_log_z`][]): with `n` samples `x_i ~ q` and weights
`w_i = p~(x_i) / q(x_i)`, `log Z ~= logsumexp(log w) - log n`, an estimate that is
consistent (and whose exponential is unbiased) whatever the fit; a good fit only makes it
precise. Its precision is summarised by the effective sample size
`ESS = (sum w)^2 / sum w^2` (between 1 and `n`).
"""

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray

from .._flow import AbstractFlow, ShapeError, init, sample
from ._losses import reverse_kl_loss
from ._step import make_step


class ImportanceEstimate(NamedTuple):
    """An importance-sampled estimate of `log Z`, made by [`importance_log_z`][].

    **Fields:**

    - `log_z`: `logsumexp(log w) - log n`, with `log w_i = log p~(x_i) - log q(x_i)`.
    - `log_z_stderr`: its delta-method standard error, `sqrt(1 / ESS - 1 / n)` (valid
      when the weights have a finite variance, i.e. when `q` has heavier tails than `p`;
      an ESS of a few percent of `n` or less warns that it may be optimistic).
    - `ess`: the effective sample size `(sum w)^2 / sum w^2`.
    - `elbo`: the mean of `log w`, a Monte-Carlo estimate of the ELBO (`<= log Z`).
    - `n`: the number of samples.
    """

    log_z: Array
    log_z_stderr: Array
    ess: Array
    elbo: Array
    n: int


def _log_weights(flow, log_density, keys, cond, chunk_size):
    def one(k):
        x, log_q = sample(flow, k, cond=cond)
        return log_density(x) - log_q

    return jax.lax.map(one, keys, batch_size=min(chunk_size, keys.shape[0]))


@eqx.filter_jit
def _estimate(flow, log_density, key, n, cond, chunk_size):
    log_w = _log_weights(flow, log_density, jr.split(key, n), cond, chunk_size)
    log_sum = jax.nn.logsumexp(log_w)
    ess = jnp.exp(2.0 * log_sum - jax.nn.logsumexp(2.0 * log_w))
    log_z = log_sum - math.log(n)
    stderr = jnp.sqrt(jnp.maximum(1.0 / ess - 1.0 / n, 0.0))
    return log_z, stderr, ess, jnp.mean(log_w)


def importance_log_z(
    flow: AbstractFlow,
    log_density: Callable[[Array], Array],
    key: PRNGKeyArray,
    n: int = 10_000,
    *,
    cond: Any = None,
    chunk_size: int = 4096,
) -> ImportanceEstimate:
    """Estimate the normaliser `log Z` of an unnormalised density by importance sampling
    with a flow as the proposal.

    `n` samples `x_i ~ q` (the flow, [`nux_eqx.sample`][]), weights
    `log w_i = log p~(x_i) - log q(x_i)`, and `log Z ~= logsumexp(log w) - log n`. The
    estimate is consistent for any proposal whose support covers the target's; the
    better `q` fits `p`, the larger the effective sample size and the smaller the error.

    **Arguments:**

    - `flow`: an initialised flow ending in a prior.
    - `log_density`: `x -> log p~(x)` for ONE example (unnormalised).
    - `key`: a PRNG key.
    - `n`: the number of samples.
    - `cond`: one conditioning shared by every sample, or `None`.
    - `chunk_size`: samples evaluated at once (bounds the memory; the result does not
      depend on it).

    **Returns:** an [`ImportanceEstimate`][] `(log_z, log_z_stderr, ess, elbo, n)` of
    scalar arrays (and `n`).
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"importance_log_z: n (the number of samples) must be >= 1, got {n}.")
    if int(chunk_size) < 1:
        raise ValueError(f"importance_log_z: chunk_size must be >= 1, got {chunk_size}.")
    _check_flow(flow, "importance_log_z")
    _check_log_density(log_density, flow.in_shape, "importance_log_z")
    log_z, stderr, ess, elbo = _estimate(flow, log_density, key, n, cond, int(chunk_size))
    return ImportanceEstimate(log_z, stderr, ess, elbo, n)


# --------------------------------------------------------------------------------------
# Checks.
# --------------------------------------------------------------------------------------


def _check_flow(flow, where: str) -> None:
    if not isinstance(flow, AbstractFlow):
        raise TypeError(f"{where}: `flow` must be a nux_eqx flow, got {type(flow).__name__}.")
    if not flow.is_initialised:
        raise ValueError(
            f"{where}: the flow is not initialised; call `nux_eqx.init(flow, x_like, key=key)` "
            "(or train it with `nux_eqx.train.fit_vi`, which initialises it) first."
        )
    if not flow.can_sample():
        raise TypeError(
            f"{where}: the flow must end in a prior (such as `UnitGaussianPrior()`) to draw samples; "
            f"{type(flow).__name__} cannot start a sample."
        )


def _check_log_density(log_density, shape, where: str) -> None:
    if not callable(log_density):
        raise TypeError(
            f"{where}: `log_density` must be a function x -> log p~(x) of ONE example, got "
            f"{type(log_density).__name__}."
        )
    x_like = jax.ShapeDtypeStruct(tuple(shape), jnp.result_type(float))
    out = jax.eval_shape(log_density, x_like)
    out_shape = getattr(out, "shape", None)
    if out_shape != ():
        raise ShapeError(
            f"{where}: `log_density` must map ONE example of shape {tuple(shape)} to a scalar; it "
            f"returned {'shape ' + str(out_shape) if out_shape is not None else type(out).__name__}. "
            "Write it for a single example (it is vmapped for you), e.g. sum over the example's "
            "axes rather than keeping them."
        )


# --------------------------------------------------------------------------------------
# fit_vi
# --------------------------------------------------------------------------------------


def _copy(tree):
    return jax.tree.map(lambda a: jnp.copy(a) if eqx.is_array(a) else a, tree)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - depends on the environment
        warnings.warn(
            "fit_vi: progress=True needs tqdm (`pip install tqdm`); training without a bar.", stacklevel=3
        )
        return None
    return tqdm(total=total, desc="fit_vi", dynamic_ncols=True, unit="step")


def fit_vi(
    flow: AbstractFlow,
    log_density: Callable[[Array], Array],
    *,
    key: PRNGKeyArray,
    steps: int,
    shape: Sequence[int] | None = None,
    example: Any = None,
    n_samples: int = 256,
    optimizer: optax.GradientTransformation | None = None,
    clip_norm: float | None = None,
    n_importance: int = 10_000,
    progress: bool = True,
    log_every: int = 50,
    steps_per_dispatch: int = 1,
    n_init: int = 1024,
) -> tuple[AbstractFlow, dict]:
    """Fit a flow to an unnormalised log-density by variational inference (reverse KL).

    Each step draws `n_samples` reparameterised samples from the flow and takes an
    optimizer step on `-ELBO = mean(log q(x) - log p~(x))` ([`reverse_kl_loss`][] with
    [`make_step`][]); step `s` uses the key `fold_in(train_key, s)` (with
    `steps_per_dispatch=k`, the `i`-th step of the call that starts at step `s` uses
    `fold_in(fold_in(train_key, s), i)`). Only the flow's
    reverse (latent -> data) pass is used, so layers built for sampling
    ([`nux_eqx.Planar`][] / [`nux_eqx.Radial`][] with `direction="sample"`) never
    root-find. After training, `log Z` is estimated by importance sampling
    ([`importance_log_z`][]) with `n_importance` samples.

    **Arguments:**

    - `flow`: an un-initialised flow ending in a prior (it is initialised on `n_init`
      draws of a standard normal of the example shape, so data-dependent layers such as
      `ActNorm` start near the identity), or an initialised one (used as it is; the
      caller's copy is not modified).
    - `log_density`: `x -> log p~(x)` for ONE example (unnormalised; any `log Z`).
    - `key`: a PRNG key (init, step keys and the final estimate derive from it).
    - `steps`: the number of optimisation steps.
    - `shape` / `example`: the shape of one example (or an example to read it from);
      needed when `flow` is not initialised.
    - `n_samples`: Monte-Carlo samples per step.
    - `optimizer`: any optax transformation (default `optax.adam(1e-3)`).
    - `clip_norm`: clip gradients to this global norm first.
    - `n_importance`: samples of the final importance-sampled `log Z` (0 skips it).
    - `progress`: show a tqdm bar with the running ELBO.
    - `log_every`: steps between reads of the ELBO (each read waits for the device).
    - `steps_per_dispatch`: steps per device call, in a `lax.scan` (as for `fit`).
    - `n_init`: the number of base draws the flow is initialised on.

    **Returns:** `(trained_flow, result)`. `result` is a JSON-serialisable dict:

    - `elbo`: the ELBO estimate of every step (`-loss`, `n_samples` samples each);
    - `log_z`, `log_z_stderr`, `ess`, `ess_fraction` (`ess / n_importance`),
      `final_elbo` (the mean log-weight of the `n_importance` samples): the final
      [`importance_log_z`][] estimate (`None` when `n_importance=0`);
    - `n_importance`, `n_samples`, `steps`, `stop_reason` (`"completed"` or
      `"non_finite"`), `wall_time` (seconds of training, without the estimate).

    A non-finite ELBO or gradient stops training with a warning; the flow returned is the
    one after the last finite step (updates with a non-finite loss are never applied).
    """
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"fit_vi: steps must be >= 0, got {steps}.")
    if int(n_samples) < 1:
        raise ValueError(f"fit_vi: n_samples must be >= 1, got {n_samples}.")
    if int(n_importance) < 0:
        raise ValueError(f"fit_vi: n_importance must be >= 0, got {n_importance}.")
    if int(log_every) < 1 or int(steps_per_dispatch) < 1 or int(n_init) < 2:
        raise ValueError("fit_vi: log_every and steps_per_dispatch must be >= 1, n_init >= 2.")
    if not isinstance(flow, AbstractFlow):
        raise TypeError(f"fit_vi: `flow` must be a nux_eqx flow, got {type(flow).__name__}.")
    if shape is not None and example is not None:
        raise ValueError("fit_vi: give `shape` or `example`, not both.")
    if example is not None:
        shape = tuple(np.shape(example))
    if shape is not None:
        shape = (int(shape),) if isinstance(shape, int | np.integer) else tuple(int(s) for s in shape)
    k_init, k_train, k_eval = jr.split(key, 3)

    if flow.is_initialised:
        if shape is not None and tuple(flow.in_shape) != shape:
            raise ShapeError(
                f"fit_vi: the flow was initialised for examples of shape {tuple(flow.in_shape)}, but "
                f"shape {shape} was given."
            )
        shape = tuple(flow.in_shape)
        flow = _copy(flow)  # training donates its buffers: leave the caller's flow intact
    else:
        if shape is None:
            raise ValueError(
                "fit_vi: the flow is not initialised, so it needs the shape of one example: pass "
                "`shape=(dim,)` or `example=x`."
            )
        if not flow.can_sample():
            raise TypeError(
                "fit_vi: the flow must end in a prior (such as `UnitGaussianPrior()`) to draw samples; "
                f"{type(flow).__name__} cannot start a sample."
            )
        base = jr.normal(k_init, (int(n_init), *shape), jnp.result_type(float))
        try:
            flow = eqx.filter_jit(init)(flow, base, key=k_init)
        except ShapeError as e:
            raise ShapeError(f"fit_vi: the flow cannot take examples of shape {shape}: {e}") from e
    _check_flow(flow, "fit_vi")
    _check_log_density(log_density, shape, "fit_vi")

    opt = optax.adam(1e-3) if optimizer is None else optimizer
    if clip_norm is not None:
        if not clip_norm > 0:
            raise ValueError(f"fit_vi: clip_norm must be > 0, got {clip_norm}.")
        opt = optax.chain(optax.clip_by_global_norm(float(clip_norm)), opt)
    loss = reverse_kl_loss(log_density, int(n_samples))
    kd = int(steps_per_dispatch)
    step_one = make_step(opt, loss)
    step_many = make_step(opt, loss, steps_per_dispatch=kd) if kd > 1 else None
    opt_state = step_one.init(flow)

    result: dict[str, Any] = {
        "elbo": [],
        "log_z": None,
        "log_z_stderr": None,
        "ess": None,
        "ess_fraction": None,
        "final_elbo": None,
        "n_importance": int(n_importance),
        "n_samples": int(n_samples),
        "steps": 0,
        "stop_reason": None,
        "wall_time": 0.0,
    }
    bar = _progress(steps, progress)
    pending: list = []
    stop = None
    t0 = time.perf_counter()

    def sync() -> int | None:
        """Record the pending ELBOs; return the step of the first non-finite one."""
        nonlocal pending
        if not pending:
            return None
        vals = -np.concatenate([np.atleast_1d(np.asarray(v)) for v in jax.device_get(pending)])
        pending = []
        bad = np.nonzero(~np.isfinite(vals))[0]
        start = len(result["elbo"])
        if len(bad):
            result["elbo"].extend(float(v) for v in vals[: bad[0]])
            return start + int(bad[0])
        result["elbo"].extend(float(v) for v in vals)
        if bar is not None:
            bar.update(len(vals))
            bar.set_postfix({"elbo": f"{np.mean(result['elbo'][-log_every:]):.4g}"}, refresh=False)
        return None

    step = 0
    try:
        while step < steps:
            k = kd if steps - step >= kd else 1
            fn = step_many if k > 1 else step_one
            flow, opt_state, value = fn(flow, opt_state, None, key=jr.fold_in(k_train, step))
            pending.append(value)
            prev, step = step, step + k
            if prev // log_every != step // log_every or step >= steps:
                bad = sync()
                if bad is not None:
                    step, stop = bad, "non_finite"
                    warnings.warn(
                        f"fit_vi: the ELBO became non-finite at step {bad + 1}; training stopped and the "
                        f"flow after step {bad} is returned. Check that log_density is finite wherever the "
                        "flow puts mass, or try a lower learning rate or `clip_norm=`.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    break
    finally:
        if bar is not None:
            bar.close()
    result["stop_reason"] = stop or "completed"
    result["steps"] = step
    result["wall_time"] = time.perf_counter() - t0
    if n_importance:
        est = importance_log_z(flow, log_density, k_eval, int(n_importance))
        result.update(
            log_z=float(est.log_z),
            log_z_stderr=float(est.log_z_stderr),
            ess=float(est.ess),
            ess_fraction=float(est.ess) / int(n_importance),
            final_elbo=float(est.elbo),
        )
    return flow, result
