"""`fit`: train a flow by maximum likelihood, with validation, early stopping and checkpoints."""

import dataclasses
import math
import os
import signal
import threading
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
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._flow import AbstractFlow, ShapeError, check_examples, check_key, init, trainable
from .._serialise import CheckpointError, save
from ._checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from ._jit import LeanJit, check_compiler_options, filter_jit_with, resolve_compiler_options
from ._losses import nll
from ._step import scan_updates, update

CHECKPOINT = "checkpoint.eqx"
FINAL = "flow.eqx"


# --------------------------------------------------------------------------------------
# Input checks.
# --------------------------------------------------------------------------------------


def _as_data(name: str, x: Any) -> np.ndarray:
    if isinstance(x, jax.Array):
        x = np.asarray(x)
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise TypeError(f"fit: `{name}` must be a numeric array, got dtype {x.dtype}.")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise TypeError(f"fit: `{name}` must be real, got dtype {x.dtype}.")
    if x.ndim < 2:
        raise ShapeError(
            f"fit: `{name}` needs a leading example axis, shape (n, ...), got shape {x.shape}; "
            "for 1-D data use `x[:, None]`."
        )
    check_examples("fit", name, x)  # no examples, NaN or inf: the same check as `init`
    dtype = jnp.dtype(jnp.result_type(float))  # float32 unless x64 is enabled
    return x.astype(dtype)


def _as_cond(name: str, cond: PyTree, n: int) -> PyTree:
    if cond is None:
        return None

    def conv(path, leaf):
        a = np.asarray(leaf)
        if a.ndim < 1 or a.shape[0] != n:
            raise ShapeError(
                f"fit: every leaf of `{name}` needs the data's leading example axis ({n}); got a leaf of "
                f"shape {a.shape}."
            )
        if np.issubdtype(a.dtype, np.floating):
            check_examples("fit", f"{name}{jax.tree_util.keystr(path)}", a)
            a = a.astype(jnp.dtype(jnp.result_type(float)))
        return a

    return jax.tree_util.tree_map_with_path(conv, cond)


def _take(cond: PyTree, idx: np.ndarray) -> PyTree:
    return None if cond is None else jax.tree.map(lambda a: a[idx], cond)


def _copy(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda a: jnp.copy(a) if eqx.is_array(a) else a, tree)


# --------------------------------------------------------------------------------------
# The batch order: a seeded permutation per epoch, a function of the step alone (so a
# resumed run sees the same batches as an uninterrupted one).
# --------------------------------------------------------------------------------------


class _Order:
    def __init__(self, seed_words: list[int], n: int, batch_size: int):
        self.seed, self.n, self.b = seed_words, n, batch_size
        self.per_epoch = n // batch_size  # the last partial batch is dropped
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([*self.seed, epoch]).permutation(self.n)
        return self._perm[i * self.b : (i + 1) * self.b].astype(np.int32)


def _seed_words(key: PRNGKeyArray) -> list[int]:
    return [int(v) for v in np.asarray(jax.random.key_data(key)).reshape(-1)]


# --------------------------------------------------------------------------------------
# Data parallelism: a 1-D mesh over the devices, the batch split along it.
# --------------------------------------------------------------------------------------


class _DataParallel:
    def __init__(self, devices: Sequence[jax.Device]):
        self.n = len(devices)
        self.mesh = Mesh(np.asarray(devices), ("batch",))
        self.replicated = NamedSharding(self.mesh, P())

    @classmethod
    def make(cls, devices: Sequence[jax.Device] | None, batch_size: int) -> "_DataParallel | None":
        devices = list(jax.devices() if devices is None else devices)
        if not devices:
            raise ValueError("fit: `devices` is empty; pass at least one device, e.g. jax.devices()[:1].")
        if len(devices) == 1:
            return None
        if batch_size % len(devices):
            raise ValueError(
                f"fit: batch_size ({batch_size}) must be a multiple of the number of devices "
                f"({len(devices)}) to split each batch evenly between them; use a batch_size of "
                f"{(batch_size // len(devices) + 1) * len(devices)}, or pass devices=jax.devices()[:1] "
                "to train on one device."
            )
        return cls(devices)

    def replicate(self, tree: PyTree) -> PyTree:
        return jax.tree.map(lambda a: jax.device_put(a, self.replicated) if eqx.is_array(a) else a, tree)

    def _batch_axis(self, axis: int) -> NamedSharding:
        return NamedSharding(self.mesh, P(*([None] * axis), "batch"))

    def shard(self, tree: PyTree, axis: int) -> PyTree:
        """Put arrays on the devices, split along `axis`."""
        return jax.device_put(tree, self._batch_axis(axis))

    def split_batch(self, tree: PyTree, axis: int) -> PyTree:
        """Inside a jitted step: split arrays along `axis` over the devices."""
        return jax.lax.with_sharding_constraint(tree, self._batch_axis(axis))

    @staticmethod
    def local(tree: PyTree) -> PyTree:
        """This process's copy of replicated arrays (across hosts they are not addressable
        as a whole, and saving needs them on the host)."""

        def one(a):
            if isinstance(a, jax.Array) and not a.is_fully_addressable and a.sharding.is_fully_replicated:
                return a.addressable_data(0)
            return a

        return jax.tree.map(one, tree)


# --------------------------------------------------------------------------------------
# The optimizer.
# --------------------------------------------------------------------------------------


class _AverageState(NamedTuple):
    average: PyTree  # the exponential moving average of the parameters
    count: Array


def _parameter_average(decay: float) -> optax.GradientTransformation:
    """Keeps an exponential moving average of the parameters after each update (Polyak
    averaging) in the optimizer state, so checkpoints and resumes carry it. The decay
    ramps up as `min(decay, (1 + t) / (10 + t))`, so early averages do not remember the
    initialisation. The updates pass through unchanged."""

    def init(params):
        # a copy: the average must not share buffers with the (donated) parameters
        return _AverageState(jax.tree.map(jnp.copy, params), jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        new = optax.apply_updates(params, updates)
        t = state.count.astype(jnp.float32)
        d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
        avg = jax.tree.map(lambda a, p: (d * a + (1 - d) * p).astype(p.dtype), state.average, new)
        return updates, _AverageState(avg, state.count + 1)

    return optax.GradientTransformation(init, update)


def _make_optimizer(optimizer, clip_norm, warmup_steps, ema=None):
    opt = optax.adam(1e-3) if optimizer is None else optimizer
    parts = []
    if clip_norm is not None:
        if not clip_norm > 0:
            raise ValueError(f"fit: clip_norm must be > 0, got {clip_norm}.")
        parts.append(optax.clip_by_global_norm(float(clip_norm)))
    parts.append(opt)
    if warmup_steps:
        w = int(warmup_steps)
        if w < 0:
            raise ValueError(f"fit: warmup_steps must be >= 0, got {warmup_steps}.")
        # Scales the updates linearly from 1/w to 1 over the first w steps: for Adam-like
        # optimizers this is a linear learning-rate warm-up.
        parts.append(optax.scale_by_schedule(lambda t: jnp.minimum(1.0, (t + 1.0) / w)))
    if ema is not None:
        if not 0.0 < ema < 1.0:
            raise ValueError(f"fit: ema must be in (0, 1) (e.g. 0.999), or None; got {ema}.")
        return optax.chain(*parts, _parameter_average(float(ema)))  # last: sees the final updates
    return optax.chain(*parts) if len(parts) > 1 else parts[0]


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - depends on the environment
        warnings.warn(
            "fit: progress=True needs tqdm (`pip install tqdm`); training without a bar.", stacklevel=3
        )
        return None
    return tqdm(total=total, initial=initial, desc="fit", dynamic_ncols=True, unit="step")


# --------------------------------------------------------------------------------------
# fit, piece 1: the configuration check.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """`fit`'s arguments, checked and converted once (see `check_settings`)."""

    x: np.ndarray  # the training examples, float
    cond: PyTree
    xv: np.ndarray | None  # the validation examples, or None
    valid_cond: PyTree
    batch_size: int
    total: int  # steps to run (2**62: until max_seconds)
    steps_per_dispatch: int
    eval_every: int
    eval_batch_size: int
    checkpoint_every: int
    log_every: int
    patience: int | None
    max_seconds: float | None
    ema: float | None
    par: "_DataParallel | None"
    compiler_options: dict | None = None  # jax.jit's (resolved from "auto"), for init, steps, validation

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def bpd_factor(self) -> float:
        """`1 / (D ln 2)`: turns a loss in nats per example into bits per dimension."""
        return 1.0 / (math.prod(self.shape) * math.log(2.0))

    def config(self) -> dict:
        """What a checkpoint records and a resume must match."""
        return {
            "n": self.n,
            "shape": list(self.shape),
            "batch_size": self.batch_size,
            "steps_per_dispatch": self.steps_per_dispatch,
            "valid": self.xv is not None,
            "ema": self.ema,
        }


def check_settings(
    data: Any,
    *,
    steps: int | None,
    epochs: int | None,
    batch_size: int,
    cond: PyTree,
    valid: Any,
    valid_cond: PyTree,
    eval_every: int,
    eval_batch_size: int,
    patience: int | None,
    checkpoint_every: int,
    log_every: int,
    steps_per_dispatch: int,
    max_seconds: float | None,
    devices: Sequence[jax.Device] | None,
    ema: float | None,
    compiler_options: dict | str | None = "auto",
) -> FitSettings:
    """Check and convert `fit`'s data and settings; raise a clear error for bad ones."""
    if hasattr(data, "train") and hasattr(data, "valid") and not isinstance(data, np.ndarray):
        if valid is None and len(data.valid) > 0:
            valid = data.valid
        data = data.train
    x = _as_data("data", data)
    n, shape = x.shape[0], tuple(x.shape[1:])
    cond = _as_cond("cond", cond, n)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"fit: batch_size must be >= 1, got {batch_size}.")
    if batch_size > n:
        raise ValueError(
            f"fit: batch_size ({batch_size}) is larger than the data ({n} examples); use a batch_size "
            f"of at most {n}."
        )
    if steps is not None and epochs is not None or (steps is None and epochs is None and max_seconds is None):
        raise ValueError("fit: give exactly one of `steps` and `epochs` (or only `max_seconds`).")
    if steps is None and epochs is None:
        total = 2**62  # until max_seconds
    else:
        total = int(steps) if steps is not None else int(epochs) * (n // batch_size)
    if total < 0:
        raise ValueError(f"fit: steps / epochs must be >= 0, got {steps if steps is not None else epochs}.")
    kd = int(steps_per_dispatch)
    if kd < 1:
        raise ValueError(f"fit: steps_per_dispatch must be >= 1, got {steps_per_dispatch}.")
    if eval_every < 1 or checkpoint_every < 1 or log_every < 1:
        raise ValueError("fit: eval_every, checkpoint_every and log_every must be >= 1.")
    if patience is not None and patience < 1:
        raise ValueError(f"fit: patience must be >= 1 or None, got {patience}.")
    xv = None
    if valid is not None:
        xv = _as_data("valid", valid)
        if tuple(xv.shape[1:]) != shape:
            raise ShapeError(
                f"fit: validation examples have shape {tuple(xv.shape[1:])}, training examples {shape}."
            )
        valid_cond = _as_cond("valid_cond", valid_cond, xv.shape[0])
        if (valid_cond is None) != (cond is None):
            raise ValueError("fit: give `valid_cond` exactly when the training data has a `cond`.")
    return FitSettings(
        x=x,
        cond=cond,
        xv=xv,
        valid_cond=valid_cond if xv is not None else None,
        batch_size=batch_size,
        total=total,
        steps_per_dispatch=kd,
        eval_every=eval_every,
        eval_batch_size=int(eval_batch_size),
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        patience=patience,
        max_seconds=max_seconds,
        ema=ema,
        par=_DataParallel.make(devices, batch_size),
        compiler_options=resolve_compiler_options(
            check_compiler_options("fit", compiler_options), x.ndim - 1
        ),
    )


def initial_flow(flow: AbstractFlow, s: FitSettings, init_batches: int, k_init: PRNGKeyArray) -> AbstractFlow:
    """The flow training starts from: a copy of an initialised flow (training donates its
    buffers), or `flow` initialised on `init_batches` batches."""
    if not isinstance(flow, AbstractFlow):
        raise TypeError(f"fit: `flow` must be a nux_eqx flow, got {type(flow).__name__}.")
    if flow.is_initialised:
        if tuple(flow.in_shape) != s.shape:
            raise ShapeError(
                f"fit: the flow was initialised for examples of shape {tuple(flow.in_shape)}, but the "
                f"data has examples of shape {s.shape}."
            )
        return _copy(flow)  # leave the caller's flow intact
    m = min(s.n, max(1, int(init_batches)) * s.batch_size)
    idx = np.random.default_rng([*_seed_words(k_init), 1]).permutation(s.n)[:m]
    try:
        # one compiled computation, with the run's compiler options (fit has already
        # refused bad data); for the digits Glow its peak stays below the training step's
        return filter_jit_with(init, s.compiler_options)(
            flow, jnp.asarray(s.x[idx]), key=k_init, cond=_take(s.cond, idx)
        )
    except ShapeError as e:
        raise ShapeError(f"fit: the flow cannot take examples of shape {s.shape}: {e}") from e


def new_history(bpd_factor: float) -> dict:
    return {
        "train_loss": [],
        "valid_step": [],
        "valid_loss": [],
        "best_step": None,
        "best_valid_loss": None,
        "steps": 0,
        "stop_reason": None,
        "wall_time": 0.0,
        "bits_per_dim_factor": bpd_factor,
    }


# --------------------------------------------------------------------------------------
# fit, piece 2: resume.
# --------------------------------------------------------------------------------------


class TrainingState(NamedTuple):
    """Where a run stands: what a checkpoint holds and the loop starts from."""

    flow: AbstractFlow
    opt_state: PyTree
    best: AbstractFlow | None
    step: int
    key: PRNGKeyArray
    history: dict


def _cannot_resume(e: Exception) -> CheckpointError:
    return CheckpointError(
        f"fit: cannot resume: {e} The file was left as it is; move it away or pass resume=False to start over."
    )


def resume_from(
    ckpt: str, config: dict, *, flow: AbstractFlow, opt_state: PyTree, key: PRNGKeyArray
) -> TrainingState:
    """Read the checkpoint `ckpt` of a run with the same `config` into the structure of
    `flow` and `opt_state`; a corrupt file or a different config raises a clear error and
    leaves the file as it is."""
    try:
        info = read_checkpoint_info(ckpt)
    except CheckpointError as e:
        raise _cannot_resume(e) from e
    for name, value in config.items():
        if info.get("config", {}).get(name) != value:
            raise ValueError(
                f"fit: cannot resume from {ckpt}: it was written with {name}={info['config'].get(name)!r}, "
                f"this run has {name}={value!r}. Use the same data and settings, or pass resume=False to "
                "start over."
            )
    try:
        state = load_checkpoint(ckpt, flow=flow, opt_state=opt_state, key=key)
    except CheckpointError as e:
        raise _cannot_resume(e) from e
    history = {**state["history"], "stop_reason": None}
    return TrainingState(
        state["flow"], state["opt_state"], state["best"], state["step"], state["key"], history
    )


# --------------------------------------------------------------------------------------
# fit, piece 3: validation.
# --------------------------------------------------------------------------------------


def _eval_chunks(loss, flow, xs, cs, base):
    def f(inp):
        xb, cb, i = inp
        return loss(flow, xb, key=jr.fold_in(base, i), cond=cb)

    return jax.lax.map(f, (xs, cs, jnp.arange(xs.shape[0])))


def _eval_rest(loss, flow, xb, cb, base, i):
    return loss(flow, xb, key=jr.fold_in(base, i), cond=cb)


class Validator:
    """The mean loss over the validation set, in chunks of `eval_batch_size` examples
    (chunk `i` uses the key `fold_in(key, i)`), the chunks moved to the device once."""

    def __init__(self, loss: Callable, s: FitSettings, key: PRNGKeyArray):
        self.loss, self.key = loss, key
        self._chunks = filter_jit_with(_eval_chunks, s.compiler_options)
        self._rest = filter_jit_with(_eval_rest, s.compiler_options)
        self.nv = s.xv.shape[0]
        self.c = min(s.eval_batch_size, self.nv)
        self.m = self.nv // self.c
        m, c, nv = self.m, self.c, self.nv

        def chunks(a):
            return jnp.asarray(a[: m * c].reshape(m, c, *a.shape[1:])) if m else None

        def rest(a):
            return jnp.asarray(a[m * c :]) if nv - m * c else None

        vc = s.valid_cond
        parts = [chunks(s.xv), None if vc is None else jax.tree.map(chunks, vc)]
        parts += [rest(s.xv), None if vc is None else jax.tree.map(rest, vc)]
        if s.par is not None:  # chunks split over the devices when they divide evenly
            split = c % s.par.n == 0
            parts = [
                s.par.shard(v, axis=1) if split and i < 2 else s.par.replicate(v) for i, v in enumerate(parts)
            ]
        self.parts = parts

    def __call__(self, flow: AbstractFlow) -> float:
        xs, cs, xr, cr = self.parts
        m, c, nv = self.m, self.c, self.nv
        total = 0.0
        if m:
            total += float(jnp.sum(self._chunks(self.loss, flow, xs, cs, self.key))) * c
        if nv - m * c:
            total += float(self._rest(self.loss, flow, xr, cr, self.key, np.asarray(m, np.int32))) * (
                nv - m * c
            )
        return total / nv


# --------------------------------------------------------------------------------------
# fit, piece 4: the loop.
# --------------------------------------------------------------------------------------


def _evaluated(flow: AbstractFlow, opt_state: PyTree, ema: float | None) -> AbstractFlow:
    """The flow to evaluate and return: with `ema`, the averaged parameters."""
    if ema is None:
        return flow
    return eqx.combine(opt_state[-1].average, trainable(flow)[1])


def _step_functions(opt, loss, par, compiler_options=None):
    """The compiled one-step and `lax.scan`-of-k-steps updates (buffers donated)."""

    def run_one(consts, flow, opt_state, ok):
        xd, cd, idx, step_no, base = consts
        xb, cb = xd[idx], _take(cd, idx)
        if par is not None:
            xb, cb = par.split_batch((xb, cb), axis=0)
        flow, opt_state, value, ok = update(
            flow, opt_state, xb, jr.fold_in(base, step_no), cb, ok, optimizer=opt, loss=loss
        )
        return flow, opt_state, ok, value[None]

    def run_many(consts, flow, opt_state, ok):
        xd, cd, idx, step_no, base = consts  # idx: (k, batch)
        xs, cs = xd[idx], _take(cd, idx)
        if par is not None:
            xs, cs = par.split_batch((xs, cs), axis=1)
        keys = jax.vmap(lambda i: jr.fold_in(base, step_no + i))(jnp.arange(idx.shape[0]))
        flow, opt_state, values, ok = scan_updates(
            flow, opt_state, xs, keys, cs, ok, optimizer=opt, loss=loss
        )
        return flow, opt_state, ok, values

    return (
        LeanJit(run_one, donate="all-except-first", compiler_options=compiler_options),
        LeanJit(run_many, donate="all-except-first", compiler_options=compiler_options),
    )


class TrainingLoop:
    """The training state of one `fit` run and the steps that advance it.

    `run()` dispatches compiled steps, reads the losses back every `log_every` steps
    (`sync`), validates every `eval_every` steps (`validate`), checkpoints every
    `checkpoint_every` steps (`checkpoint`) and stops at the end, at a non-finite loss,
    on early stopping, at the time limit or on Ctrl-C (after a checkpoint)."""

    def __init__(
        self,
        s: FitSettings,
        state: TrainingState,
        *,
        opt: optax.GradientTransformation,
        loss: Callable,
        ckpt: str | None,
        final_path: str | None,
        progress: bool,
    ):
        flow, opt_state, best, step, key, history = state
        self.s, self.key, self.history = s, key, history
        _, self.k_train, k_valid, k_order = jr.split(key, 4)
        self.order = _Order(_seed_words(k_order), s.n, s.batch_size)
        self.validator = None if s.xv is None else Validator(loss, s, k_valid)
        self.one, self.many = _step_functions(opt, loss, s.par, s.compiler_options)
        self.ckpt, self.final_path = ckpt, final_path
        self.step = step
        self.xd = jnp.asarray(s.x)
        self.cd = None if s.cond is None else jax.tree.map(jnp.asarray, s.cond)
        self.ok = jnp.asarray(True)
        if s.par is not None:  # replicate the state and the data over the devices
            flow, opt_state, best = s.par.replicate((flow, opt_state, best))
            self.xd, self.cd, self.ok = s.par.replicate((self.xd, self.cd, self.ok))
        self.flow, self.opt_state, self.best = flow, opt_state, best
        self.pending: list = []
        self.bar = _progress(None if s.total == 2**62 else s.total, min(step, s.total), progress)
        self.t0 = time.perf_counter() - float(history.get("wall_time") or 0.0)
        self.last_valid = history["valid_loss"][-1] if history["valid_loss"] else None
        self.evals_since_best = 0
        if history["best_step"] is not None:
            self.evals_since_best = sum(v > history["best_step"] for v in history["valid_step"])

    def current(self) -> AbstractFlow:
        """The flow to evaluate and return: with `ema`, the averaged parameters."""
        return _evaluated(self.flow, self.opt_state, self.s.ema)

    def dispatch(self, k: int) -> None:
        """Run steps `step .. step + k - 1` on the device (without waiting for them)."""
        consts = (self.xd, self.cd, None, np.asarray(self.step, np.int32), self.k_train)
        if k == 1:
            idx, fn = self.order.indices(self.step), self.one
        else:
            idx, fn = np.stack([self.order.indices(self.step + i) for i in range(k)]), self.many
        consts = (*consts[:2], idx, *consts[3:])
        self.flow, self.opt_state, self.ok, values = fn(consts, self.flow, self.opt_state, self.ok)
        self.pending.append(values)
        self.step += k

    def sync(self) -> int | None:
        """Fetch the pending losses into the history; return the step number of the first
        non-finite loss, if any."""
        if not self.pending:
            return None
        vals = np.concatenate([np.asarray(v) for v in jax.device_get(self.pending)])
        self.pending = []
        losses = self.history["train_loss"]
        start = len(losses)
        bad = np.nonzero(~np.isfinite(vals))[0]
        if len(bad):
            losses.extend(float(v) for v in vals[: bad[0]])
            return start + int(bad[0])
        losses.extend(float(v) for v in vals)
        if self.bar is not None:
            self.bar.update(len(vals))
            lv = float(np.mean(losses[-min(len(vals), self.s.log_every) :]))
            post = {"loss": f"{lv:.4g}", "bits/dim": f"{lv * self.s.bpd_factor:.4g}"}
            if self.last_valid is not None:
                post["valid"] = f"{self.last_valid:.4g}"
            self.bar.set_postfix(post, refresh=False)
        return None

    def validate(self) -> bool:
        """Validate the current flow, keep it when it is the best; return whether to stop
        early (`patience` validations without improvement)."""
        h = self.history
        self.last_valid = self.validator(self.current())
        h["valid_step"].append(self.step)
        h["valid_loss"].append(self.last_valid)
        if h["best_valid_loss"] is None or self.last_valid < h["best_valid_loss"]:
            h["best_valid_loss"], h["best_step"] = self.last_valid, self.step
            self.best = _copy(self.current())
            self.evals_since_best = 0
        else:
            self.evals_since_best += 1
        return self.s.patience is not None and self.evals_since_best >= self.s.patience

    def checkpoint(self, final: bool) -> None:
        """Write the checkpoint (and, when `final`, the returned flow)."""
        if self.ckpt is None:
            return
        self.history["steps"] = self.step
        self.history["wall_time"] = time.perf_counter() - self.t0
        if jax.process_index() != 0:  # one writer; every process holds the same state
            return
        f, o, b = _DataParallel.local((self.flow, self.opt_state, self.best))
        save_checkpoint(
            self.ckpt,
            flow=f,
            opt_state=o,
            key=self.key,
            step=self.step,
            history=self.history,
            best=b,
            config=self.s.config(),
        )
        if final:
            save(self.final_path, b if b is not None else _evaluated(f, o, self.s.ema))

    def _one_round(self) -> str | None:
        """Dispatch the next steps and do what falls due; return a stop reason or None."""
        s = self.s
        prev = self.step
        self.dispatch(s.steps_per_dispatch if s.total - prev >= s.steps_per_dispatch else 1)

        def crossed(every: int) -> bool:
            return prev // every != self.step // every

        last = self.step >= s.total or (
            s.max_seconds is not None and time.perf_counter() - self.t0 >= s.max_seconds
        )
        do_eval = self.validator is not None and (crossed(s.eval_every) or last)
        do_ckpt = self.ckpt is not None and crossed(s.checkpoint_every)
        if crossed(s.log_every) or do_eval or do_ckpt or last:
            bad = self.sync()
            if bad is not None:
                self.step = bad  # the state is the one after the last finite step
                warnings.warn(
                    f"fit: the loss became non-finite at step {bad + 1}; training stopped and the flow "
                    f"after step {bad} (the last finite loss) is returned. Try a lower learning rate, "
                    "`clip_norm=`, `warmup_steps=`, or check the data and the flow's numerics.",
                    RuntimeWarning,
                    stacklevel=4,
                )
                return "non_finite"
        stop = "early_stopping" if do_eval and self.validate() else None
        if do_ckpt and stop is None:
            self.checkpoint(final=False)
        if stop is None and last and self.step < s.total:
            stop = "time_limit"
        return stop

    def run(self) -> tuple[AbstractFlow, dict]:
        """Train to the end; return `(flow, history)` as `fit` does."""
        # Ctrl-C during the loop sets a flag; the loop stops between steps, so the state it
        # checkpoints is complete (an interrupt inside a dispatch would lose donated buffers).
        interrupted = []
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        stop = None
        try:
            while self.step < self.s.total and stop is None:
                if interrupted:
                    raise KeyboardInterrupt
                stop = self._one_round()
        except KeyboardInterrupt:
            # Keep the user's work: checkpoint the last completed step, then stop.
            if self.sync() is None:
                self.checkpoint(final=False)
            raise
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            if self.bar is not None:
                self.bar.close()
        self.history["stop_reason"] = stop or "completed"
        self.history["steps"] = self.step
        self.history["wall_time"] = time.perf_counter() - self.t0
        self.checkpoint(final=True)
        return (self.best if self.best is not None else self.current()), self.history


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------


def fit(
    flow: AbstractFlow,
    data: Any,
    *,
    key: PRNGKeyArray,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 64,
    optimizer: optax.GradientTransformation | None = None,
    loss: Callable = nll,
    cond: PyTree = None,
    valid: Any = None,
    valid_cond: PyTree = None,
    eval_every: int = 250,
    eval_batch_size: int = 1024,
    patience: int | None = None,
    clip_norm: float | None = None,
    warmup_steps: int = 0,
    progress: bool = True,
    log_every: int = 50,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    init_batches: int = 1,
    steps_per_dispatch: int = 1,
    max_seconds: float | None = None,
    devices: Sequence[jax.Device] | None = None,
    ema: float | None = None,
    compiler_options: dict | str | None = "auto",
) -> tuple[AbstractFlow, dict]:
    """Train a flow by minimising `loss` (the NLL by default) with an optax optimizer.

    The training data live on the device; each step gathers a batch there (shuffled
    epochs, last partial batch dropped, a seeded order that depends on the step alone), and
    step `s` uses the key `fold_in(train_key, s)`. So a run resumed from a checkpoint
    reproduces the uninterrupted run exactly.

    **Arguments:**

    - `flow`: an un-initialised flow (it is initialised on `init_batches` batches, so
      data-dependent layers such as `ActNorm` see `init_batches * batch_size` examples),
      or an initialised one (used as it is).
    - `data`: the training examples, an array `(n, ...)`, or a
      [`nux_eqx.data.Split`][] (its `train`; its `valid` too when `valid` is not given).
    - `key`: a PRNG key (init, step keys, batch order and validation noise derive from it).
    - `steps` / `epochs`: how long to train (give exactly one, or neither with
      `max_seconds`).
    - `batch_size`: examples per step.
    - `optimizer`: any optax transformation (default `optax.adam(1e-3)`).
    - `loss`: `loss(flow, x, *, key, cond) -> scalar`, default [`nll`][].
    - `cond`: batched conditioning aligned with `data` (leading axis `n` on every leaf).
    - `valid`, `valid_cond`: validation examples (and conditioning). With them, the loss
      on `valid` is computed every `eval_every` steps (with a fixed key) and the flow with
      the best validation loss is returned.
    - `eval_every`: steps between validations.
    - `eval_batch_size`: examples per validation chunk.
    - `patience`: stop after this many validations without improvement (early stopping);
      `None` never stops early.
    - `clip_norm`: clip gradients to this global norm.
    - `warmup_steps`: scale the updates linearly up to 1 over these steps.
    - `progress`: show a tqdm bar with the loss and bits/dim (`loss / (D ln 2)`).
    - `log_every`: steps between reads of the loss (each read waits for the device).
    - `checkpoint_dir`: write `checkpoint.eqx` there every `checkpoint_every` steps and at
      the end (atomically), and the returned flow as `flow.eqx` (load it with
      `nux_eqx.load(path, Model())`).
    - `resume`: continue from `checkpoint_dir/checkpoint.eqx` when it exists (with the
      checkpoint's key, so the run continues exactly as if never interrupted; a run that
      stopped at step `s` continues to `steps`). A corrupt or mismatched checkpoint raises
      a clear error and is left untouched.
    - `init_batches`: the number of batches the data-dependent init sees (their
      concatenation, so ActNorm takes the statistics of all of them, as NuX's averaged
      init batches).
    - `steps_per_dispatch`: run this many steps per device call in a `lax.scan`. On
      XLA:CPU this speeds up small MLP flows and can slow convolutional flows several
      times; the default 1 is a Python loop of compiled steps.
    - `max_seconds`: stop after this much training wall time (counting the time of the
      run being resumed), with a last validation; `stop_reason` is then `"time_limit"`.
    - `devices`: the devices to train on, data-parallel (default: all of `jax.devices()`,
      which after `jax.distributed.initialize` spans every host). With more than one,
      each batch is split over a `Mesh` of them along the batch axis and the flow and the
      optimizer state are replicated; XLA averages the gradients across devices, so the
      result is the single-device run's up to float rounding. `batch_size` must then be
      a multiple of the number of devices. Pass `jax.devices()[:1]` for one device.
    - `ema`: keep an exponential moving average of the parameters with this decay (e.g.
      `0.999`; Polyak averaging, as Glow and Flow++ evaluate): validation, the best flow
      and the returned flow then use the averaged parameters, which usually generalise
      better than the last iterate. The average lives in the optimizer state, so it is
      checkpointed and resumed with it.
    - `compiler_options`: XLA options for compiling the initialisation, the steps and the
      validation, as `jax.jit` takes them; `None` for XLA's defaults. The default `"auto"`
      uses [`LEAN_CPU_COMPILE`][nux_eqx.train.LEAN_CPU_COMPILE] for images (examples of
      rank 3 or more) when JAX runs on the CPU, XLA's defaults otherwise
      ([`auto_compiler_options`][nux_eqx.train.auto_compiler_options]).
      They change how the computation is compiled, not what it computes, so a run may be
      resumed with other options.

    Ctrl-C (`KeyboardInterrupt`) writes a checkpoint of the last completed step before
    it propagates, so `resume=True` continues the run.

    **Returns:** `(trained_flow, history)`. `history` is a JSON-serialisable dict:
    `train_loss` (one value per step), `valid_step` / `valid_loss`, `best_step`,
    `best_valid_loss`, `steps`, `stop_reason` (`"completed"`, `"early_stopping"`,
    `"non_finite"`, `"time_limit"`), `wall_time`, `bits_per_dim_factor` (`1 / (D ln 2)`).

    A non-finite loss or gradient stops training with a warning; the flow returned is the
    one after the last finite step (updates with a non-finite loss are never applied).

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        x = nux.data.toy_sample("8gaussians", 2048, seed=0)    # (2048, 2) numpy array
        flow, history = nux.train.fit(
            nux.RealNVP(4, (32, 32)), x, key=jax.random.key(0),
            steps=50, batch_size=128, valid=x[:256], eval_every=25, progress=False,
        )
        print(history["steps"], len(history["train_loss"]), history["valid_step"])   # 50 50 [25, 50]
        print(flow.in_shape)                                                          # (2,)
        ```
    """
    check_key("fit", key, batch_hint=False)
    s = check_settings(
        data,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        cond=cond,
        valid=valid,
        valid_cond=valid_cond,
        eval_every=eval_every,
        eval_batch_size=eval_batch_size,
        patience=patience,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        steps_per_dispatch=steps_per_dispatch,
        max_seconds=max_seconds,
        devices=devices,
        ema=ema,
        compiler_options=compiler_options,
    )
    flow = initial_flow(flow, s, init_batches, jr.split(key, 4)[0])
    opt = _make_optimizer(optimizer, clip_norm, warmup_steps, ema)
    opt_state = opt.init(trainable(flow)[0])
    state = TrainingState(flow, opt_state, None, 0, key, new_history(s.bpd_factor))
    if resume and checkpoint_dir is None:
        raise ValueError("fit: resume=True needs a checkpoint_dir.")
    ckpt = final = None
    if checkpoint_dir is not None:
        ckpt = os.path.join(os.fspath(checkpoint_dir), CHECKPOINT)
        final = os.path.join(os.fspath(checkpoint_dir), FINAL)
        if resume and os.path.exists(ckpt):
            # continue with the run's own key (the batch order and step keys derive from it)
            state = resume_from(ckpt, s.config(), flow=flow, opt_state=opt_state, key=key)
            state = state._replace(history={**new_history(s.bpd_factor), **state.history})
    loop = TrainingLoop(s, state, opt=opt, loss=loss, ckpt=ckpt, final_path=final, progress=progress)
    return loop.run()
