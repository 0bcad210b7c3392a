"""The `nux-eqx` command: train a flow on a bundled dataset, evaluate it, sample from it.

    nux-eqx train                       # a 2-level Glow on sklearn's digits, ~2 minutes
    nux-eqx train --data 8gaussians --model nsf --steps 3000
    nux-eqx eval runs/digits-glow-seed0
    nux-eqx sample runs/digits-glow-seed0 -n 64 --temperature 0.7
    nux-eqx list

User errors (a bad option value, an unknown name, an existing run folder, a resume with
another configuration, a dataset that is not installed) print one clear line and exit
with status 2, before anything is created on disk; nothing on disk is overwritten.
`main(argv)` returns the exit status (it never raises `SystemExit`).
"""

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class UserError(Exception):
    """A mistake in the command line or the run folder: exit status 2."""


_IMPORTED_AT = time.time()


def _process_start_time() -> float:
    """The wall-clock time (epoch seconds) at which this process started.

    Read from `/proc` where there is one (Linux: the start time in clock ticks since
    boot, against the uptime); elsewhere the time this module was imported, which
    misses only the interpreter's start."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        # the command name (field 2) may hold spaces: count fields after its ')'
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        started = time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
        return min(started, _IMPORTED_AT)
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED_AT


# --------------------------------------------------------------------------------------
# Models the command knows.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    build: Callable  # (split) -> un-initialised flow
    kinds: tuple[str, ...]  # "image" and/or "vector"
    description: str
    # (split, halves=None) -> the unrolled layout nux_eqx 0.1 wrote (odd sizes split
    # floor(d/2), or as `halves` says), where it differs: runs written then resume (and
    # old run folders load) in their own layout
    build_unrolled: Callable | None = None


def _glow(factor_out, dequantization):
    def build(split):
        import nux_eqx as nux

        h, w, _ = split.shape
        levels = 1
        while levels < 3 and h % 2 ** (levels + 1) == 0 and w % 2 ** (levels + 1) == 0:
            levels += 1
        levels = min(levels, 2)
        return nux.MultiscaleGlow(
            n_levels=levels,
            n_blocks=4,
            n_channels=64,
            factor_out=factor_out,
            dequantize=split.levels,
            dequantization=dequantization,
            # few intensity levels: a small logit squeeze (digits: 2.04 vs 2.12 bits/dim at 0.05)
            lmbda=0.01 if split.levels is not None and split.levels <= 32 else 0.05,
        )

    return build


def _vector(name, v01=False):
    """The vector model `name`; `v01=True`: in nux_eqx 0.1's layout (unrolled layers,
    odd sizes split floor(d/2) unless `halves` says otherwise)."""

    def build(split, halves=None, permutation=None, ordering=None):
        import nux_eqx.models as models

        scan = not v01
        halves = halves or ("floor" if v01 else "ceil")
        # 0.1 mixed with random permutations; later runs as their checkpoint says, else
        # the model's default
        permutation = permutation or ("random" if v01 else None)
        mix = {} if permutation is None else {"permutation": permutation}

        dq = split.levels
        if name == "realnvp":
            return models.RealNVP(8, (128, 128), dequantize=dq, scan=scan, split=halves, **mix)
        if dq is not None:
            raise UserError(
                f"model {name!r} is for continuous vectors; use realnvp or glow for discrete data."
            )
        if name == "maf":  # a run's checkpoint may say which orderings it was written with
            return models.MaskedAutoregressiveFlow(
                5, (128, 128), **({"ordering": ordering} if ordering else {})
            )
        return models.NeuralSplineFlow(8, (128, 128), K=8, B=4.0, scan=scan, split=halves, **mix)

    return build


MODELS: dict[str, ModelSpec] = {
    "glow": ModelSpec(
        _glow("chain_rule", "variational"),
        ("image",),
        "multiscale Glow: 2 levels x 4 steps, width 64, learned factor-out prior, variational dequantisation",
    ),
    "glow-plain": ModelSpec(
        _glow("prior", "uniform"),
        ("image",),
        "the same Glow with N(0, I) for the factored-out halves and uniform dequantisation (faster steps)",
    ),
    "flowpp": ModelSpec(
        lambda split: __import__("nux_eqx").FlowPlusPlus(
            n_levels=2 if split.shape[0] % 2 == 0 and split.shape[1] % 2 == 0 else 1,
            dequantize=split.levels,
            lmbda=0.01 if split.levels is not None and split.levels <= 32 else 0.05,
        ),
        ("image",),
        "Flow++-style: 6 logistic-mixture (K=4) couplings, gated residual nets (width 16, no attention), "
        "variational dequantisation",
    ),
    "realnvp": ModelSpec(
        _vector("realnvp"),
        ("vector",),
        "RealNVP: 8 affine couplings, MLP 2x128, ActNorm",
        _vector("realnvp", v01=True),
    ),
    "maf": ModelSpec(_vector("maf"), ("vector",), "masked autoregressive flow: 5 MADE layers 2x128"),
    "nsf": ModelSpec(
        _vector("nsf"),
        ("vector",),
        "neural spline flow: 8 rational-quadratic couplings, K=8, B=4",
        _vector("nsf", v01=True),
    ),
}


# --------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------


def _load_data(name: str, seed: int):
    from nux_eqx import data

    known = data.list_datasets()
    if name not in known:
        raise UserError(
            f"unknown dataset {name!r}; choose one of: {', '.join(sorted(known))} (see `nux-eqx list`)."
        )
    try:
        split = data.load(name)
    except (ImportError, FileNotFoundError, ModuleNotFoundError) as e:
        raise UserError(f"dataset {name!r} is not installed here: {e}") from e
    if len(split.valid) == 0:  # carve a validation set out of train for early stopping
        perm = np.random.default_rng(seed + 1).permutation(len(split.train))
        nv = max(1, len(perm) // 10)
        import dataclasses

        split = dataclasses.replace(split, train=split.train[perm[nv:]], valid=split.train[perm[:nv]])
    return split


def _kind(split) -> str:
    return "image" if len(split.shape) == 3 else "vector"


def _model(name: str, split):
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)} (see `nux-eqx list`).")
    spec = MODELS[name]
    kind = _kind(split)
    if kind not in spec.kinds:
        fits = [m for m, s in MODELS.items() if kind in s.kinds]
        raise UserError(
            f"model {name!r} takes {' or '.join(spec.kinds)} data, but dataset {split.name!r} holds "
            f"{kind}s of shape {split.shape}; for it choose one of: {', '.join(fits)}."
        )
    return spec.build(split)


def _as_checkpointed(run: str, name: str, split, flow):
    """The flow to resume `run` into: a run whose checkpoint holds the unrolled layout of
    nux_eqx 0.1 (no `Repeat`) continues in that layout, a scanned one keeps what it mixed
    the features with between couplings (random permutations or `Roll`), and a MAF run
    keeps its first layer's ordering (random before `ordering="data_first"`)."""
    spec = MODELS[name]
    ckpt = os.path.join(run, "checkpoints", "checkpoint.eqx")
    if (spec.build_unrolled is None and name != "maf") or not os.path.exists(ckpt):
        return flow
    from nux_eqx._serialise import CheckpointError, read_header

    try:
        layers = read_header(ckpt).get("layers")
    except (CheckpointError, OSError, ValueError):
        return flow  # `fit` reports an unreadable checkpoint and leaves it as it is
    if not isinstance(layers, list):  # written before checkpoints described their layers
        layers = None
    entries = [e for e in layers or () if isinstance(e, list) and len(e) > 2 and isinstance(e[2], dict)]
    if name == "maf":  # every layer in a random order, in checkpoints before "data_first"
        mades = [e[2] for e in entries if e[1] == "MaskedAutoregressive"]
        old_layout = layers is None or (bool(mades) and mades[0].get("ordering") == "random")
        return spec.build(split, ordering="random") if old_layout else flow
    if layers is None:
        return spec.build_unrolled(split)
    if not entries:
        return flow
    names = {e[1] for e in entries}
    # 0.1 split odd sizes floor(d/2); later checkpoints record their split
    splits = {e[2].get("split") for e in entries if e[1] == "Coupling"} - {None}
    halves = splits.pop() if len(splits) == 1 else None
    if "Repeat" in names:
        mixer = "random" if "Permute" in names else "roll" if "Roll" in names else None
        return flow if mixer is None else spec.build(split, halves=halves, permutation=mixer)
    return spec.build_unrolled(split, halves=halves or "floor")


def _bpd_factor(split) -> float | None:
    return 1.0 / (math.prod(split.shape) * math.log(2)) if split.levels is not None else None


def _versions() -> dict:
    import equinox
    import jax

    import nux_eqx

    return {
        "nux_eqx": nux_eqx.__version__,
        "jax": jax.__version__,
        "equinox": equinox.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _write_json(path: str, obj) -> None:
    from nux_eqx._serialise import atomic_write

    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def _read_config(run: str) -> dict:
    path = os.path.join(run, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{run} is not a nux-eqx run folder (no config.json).")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from e
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a nux-eqx run configuration (not a JSON object).")
    return config


def _evaluate(flow, x, split, key, batch=512) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from nux_eqx.train import nll

    f = eqx.filter_jit(lambda fl, xb, k: nll(fl, xb, key=k))
    total, n = 0.0, len(x)
    for i in range(0, n, batch):
        xb = jnp.asarray(x[i : i + batch])
        total += float(f(flow, xb, jax.random.fold_in(key, i))) * len(xb)
    value = split.to_data_units(total / n)
    out = {"nll": value}
    factor = _bpd_factor(split)
    if factor is not None:
        out["bits_per_dim"] = value * factor
    return out


# --------------------------------------------------------------------------------------
# Pictures.
# --------------------------------------------------------------------------------------


def _plot_losses(path, history, split):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factor = _bpd_factor(split)
    scale, label = (factor, "bits/dim") if factor else (1.0, "NLL (nats, standardised data)")
    loss = np.asarray(history.get("train_loss", []), np.float64) * scale
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if len(loss):
        w = max(1, len(loss) // 100)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(len(smooth)) + w, smooth, label="train (moving average)")
    if history.get("valid_step"):
        ax.plot(history["valid_step"], np.asarray(history["valid_loss"]) * scale, "o-", ms=3, label="valid")
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _compiler_options(lean: bool | None):
    """`--lean-compile`: `LEAN_CPU_COMPILE` on CPU (its optimisation level would slow GPU
    code), elsewhere XLA's defaults with a note; `--no-lean-compile`: XLA's defaults;
    neither: `fit`'s `"auto"` (lean for images on CPU)."""
    import jax

    import nux_eqx as nux

    if lean is None:
        return "auto"
    if not lean:
        return None
    if jax.default_backend() != "cpu":
        print(
            f"--lean-compile is for CPU; training on {jax.default_backend()} with XLA's defaults",
            file=sys.stderr,
        )
        return None
    return nux.train.LEAN_CPU_COMPILE


def _draw_samples(flow, n, key, temperature):
    import nux_eqx as nux

    x, _ = nux.train.batch_sample(flow, key, n, temperature=temperature)  # the keys of split(key, n)
    return np.asarray(x)


def _sample_axes(data: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-feature axis limits that span `data` (its 0.5-99.5 % range, widened by a quarter
    on each side), and how many `samples` fall outside them (non-finite ones included): a
    few far samples of a flow early in training would otherwise squeeze the data into a
    corner of the figure."""
    lo, hi = np.quantile(data, [0.005, 0.995], axis=0)
    lo, hi = lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo)
    return lo, hi, _n_outside(samples, lo, hi)


def _n_outside(samples: np.ndarray, lo, hi) -> int:
    """How many rows of `samples` leave the box `[lo, hi]` (non-finite ones included)."""
    return int((~np.all((samples >= lo) & (samples <= hi), axis=1)).sum())


def _plot_samples(path, flow, split, n, key, temperature):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = _draw_samples(flow, n, key, temperature)
    if _kind(split) == "image":
        levels = split.levels or 256
        cols = int(math.ceil(math.sqrt(n)))
        rows = int(math.ceil(n / cols))
        h, w, c = split.shape
        grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c))
        for i in range(n):
            r, q = divmod(i, cols)
            img = np.clip(x[i] / (levels - 1), 0, 1)
            grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = img
        fig, ax = plt.subplots(figsize=(cols * 0.6 + 1, rows * 0.6 + 1), dpi=120)
        ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"{n} samples, temperature {temperature:g}")
    elif split.shape == (2,):
        import jax

        import nux_eqx as nux

        lim = 4.0
        g = np.linspace(-lim, lim, 120, dtype=np.float32)
        grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        logp = np.asarray(jax.jit(jax.vmap(lambda v: nux.log_prob(flow, v)))(grid)).reshape(120, 120)
        fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=120)
        axes[0].imshow(np.exp(logp), origin="lower", extent=(-lim, lim, -lim, lim), cmap="magma")
        axes[0].set_title("density (standardised)")
        axes[1].scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
        axes[1].set_xlim(-lim, lim)
        axes[1].set_ylim(-lim, lim)
        axes[1].set_title(f"{n} samples, temperature {temperature:g}")
        outside = _n_outside(x, -lim, lim)
        if outside:
            axes[1].set_xlabel(f"{outside} of {len(x)} samples lie outside these axes")
        for ax in axes:
            ax.set_aspect("equal")
    else:
        d = min(split.shape[-1], 4)
        fig, axes = plt.subplots(1, d - 1 if d > 1 else 1, figsize=(3.2 * max(d - 1, 1), 3), dpi=120)
        axes = np.atleast_1d(axes)
        test = np.asarray(split.test[:n])
        lo, hi, outside = _sample_axes(test[:, :d], x[:, :d])
        for j, ax in enumerate(axes):
            k = j + 1 if d > 1 else 0
            ax.scatter(test[:, 0], test[:, k], s=2, alpha=0.4, label="test data")
            ax.scatter(x[:, 0], x[:, k], s=2, alpha=0.4, label="samples")
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[k], hi[k])
            ax.set_xlabel("feature 0")
            ax.set_ylabel(f"feature {k}")
        axes[0].legend()
        if outside:
            fig.suptitle(f"{outside} of {len(x)} samples lie outside these axes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Commands.
# --------------------------------------------------------------------------------------

# The settings of `train` and their defaults. The parser's own defaults are `None`, so a
# value that is not None was given on the command line: `--resume` takes every setting
# that was not given from the run's config.json, and compares the ones that were.
TRAIN_DEFAULTS = {
    "data": "digits",
    "model": "glow",
    "steps": None,
    "minutes": 1.5,
    "batch_size": 64,
    "lr": 1e-3,
    "ema": 0.999,
    "seed": 0,
    "eval_every": 250,
    "checkpoint_every": 500,
}
# must match when resuming; the budget (--steps / --minutes) and the cadences may change
COMPARED = ("data", "model", "batch_size", "lr", "ema", "seed")


def _train_settings(args) -> tuple[str, dict]:
    """The run folder and the settings of `train`: the command line over the run's
    config.json (with `--resume`) over the defaults. Touches nothing on disk."""
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    settings = {**TRAIN_DEFAULTS, **given}
    run = args.out or os.path.join("runs", f"{settings['data']}-{settings['model']}-seed{settings['seed']}")
    if os.path.exists(run):
        if not args.resume:
            raise UserError(
                f"run folder {run} already exists; pass --resume to continue it, or --out to train into a new folder."
            )
        old = _read_config(run)
        for k in COMPARED:
            if k in given and k in old and old[k] != given[k]:
                raise UserError(
                    f"cannot resume {run}: it was trained with --{k.replace('_', '-')} {old[k]}, this command says "
                    f"{given[k]}; leave the option out (the run's own value is used), or train into a new --out folder."
                )
        settings = {**TRAIN_DEFAULTS, **{k: old[k] for k in TRAIN_DEFAULTS if old.get(k) is not None}}
        if "steps" in given or "minutes" in given:  # a new budget replaces the old one
            settings["steps"] = settings["minutes"] = None
        settings.update(given)
    elif args.resume:
        raise UserError(f"nothing to resume: {run} does not exist.")
    if settings["steps"] is not None:
        settings["minutes"] = None
    return run, settings


def _remove_if_unused(run: str) -> None:
    """Undo what a failed `train` created in a new run folder, unless it got a checkpoint."""
    ckpts = os.path.join(run, "checkpoints")
    if os.path.isdir(ckpts) and os.listdir(ckpts):
        return
    for path in (os.path.join(run, "config.json"),):
        if os.path.exists(path):
            os.unlink(path)
    for folder in (ckpts, run):
        try:
            os.rmdir(folder)  # only when empty
        except OSError:
            pass


def cmd_train(args) -> int:
    run, s = _train_settings(args)
    split = _load_data(s["data"], s["seed"])
    flow = _model(s["model"], split)  # validate before touching the disk
    if args.resume:
        flow = _as_checkpointed(run, s["model"], split, flow)
    if s["batch_size"] > len(split.train):
        raise UserError(
            f"--batch-size {s['batch_size']} is larger than the training set of {s['data']} "
            f"({len(split.train)} examples); use at most {len(split.train)}."
        )

    import jax
    import optax

    import nux_eqx as nux
    from nux_eqx.train import fit

    created = not os.path.exists(run)
    os.makedirs(run, exist_ok=True)
    _write_json(
        os.path.join(run, "config.json"),
        {**s, "resolved": {"shape": list(split.shape), "levels": split.levels}},
    )
    key = jax.random.key(s["seed"])
    max_seconds = None if s["steps"] is not None else 60.0 * s["minutes"]
    print(
        f"training {s['model']} on {s['data']} ({split.shape}, {len(split.train)} train / {len(split.valid)} valid / "
        f"{len(split.test)} test) -> {run}"
    )
    try:
        flow, history = fit(
            flow,
            split.train,
            key=key,
            steps=s["steps"],
            batch_size=s["batch_size"],
            # halving the rate every 1500 steps: 2.118 vs 2.131 test bits/dim on digits at 5000 steps
            optimizer=optax.adam(optax.exponential_decay(s["lr"], 1500, 0.5)),
            valid=split.valid,
            eval_every=s["eval_every"],
            clip_norm=5.0,
            checkpoint_dir=os.path.join(run, "checkpoints"),
            checkpoint_every=s["checkpoint_every"],
            resume=args.resume,
            init_batches=8,
            ema=s["ema"] or None,
            max_seconds=max_seconds,
            progress=not args.quiet,
            compiler_options=_compiler_options(args.lean_compile),
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: the last checkpoint is in {run}/checkpoints; continue with the same command and --resume",
            file=sys.stderr,
        )
        return 130
    except nux.CheckpointError as e:  # fit refused the run's checkpoint and left it as it was
        raise UserError(f"{e} (From the command line: train into a new folder with --out.)") from e
    except Exception:
        if created:
            _remove_if_unused(run)
        raise
    k_eval = jax.random.fold_in(key, 12345)
    metrics = {
        "train": _evaluate(flow, split.train[: min(len(split.train), 5000)], split, k_eval),
        "valid": _evaluate(flow, split.valid, split, k_eval),
        "test": _evaluate(flow, split.test, split, k_eval),
        "steps": history["steps"],
        "best_step": history.get("best_step"),
        "stop_reason": history.get("stop_reason"),
        "steps_per_second": history["steps"] / max(history["wall_time"], 1e-9),
        "train_wall_time_s": history["wall_time"],
        "command_wall_time_s": None,  # set last, after the pictures
        "parameters": int(sum(p.size for p in jax.tree.leaves(nux.trainable(flow)[0]))),
        "versions": _versions(),
    }
    _write_json(os.path.join(run, "history.json"), history)
    _plot_losses(os.path.join(run, "loss.png"), history, split)
    _plot_samples(
        os.path.join(run, "samples.png"),
        flow,
        split,
        64,
        jax.random.fold_in(key, 7),
        0.8 if _kind(split) == "image" else 1.0,
    )
    # the whole command: from the process start (see `main`), data, init, training,
    # evaluation and pictures included
    metrics["command_wall_time_s"] = time.time() - args.started_at
    _write_json(os.path.join(run, "metrics.json"), metrics)
    t = metrics["test"]
    print(
        f"test NLL {t['nll']:.4f} nats"
        + (f", {t['bits_per_dim']:.4f} bits/dim" if "bits_per_dim" in t else "")
        + f"  ({history['steps']} steps, {metrics['steps_per_second']:.1f} steps/s; best step {history.get('best_step')})"
    )
    print(f"wrote {run}/metrics.json, loss.png, samples.png")
    return 0


def _load_run(run: str):
    import nux_eqx as nux

    config = _read_config(run)
    split = _load_data(config["data"], config["seed"])
    try:
        return config, split, nux.load_run(run)  # the architecture is stored with the flow
    except nux.CheckpointError as e:
        raise UserError(str(e)) from e


def cmd_eval(args) -> int:
    import jax

    config, split, flow = _load_run(args.run)
    key = jax.random.fold_in(jax.random.key(config["seed"]), 12345)
    b = args.batch_size
    out = {
        "test": _evaluate(flow, split.test, split, key, batch=b),
        "valid": _evaluate(flow, split.valid, split, key, batch=b),
    }
    print(json.dumps(out, indent=2))
    return 0


def cmd_sample(args) -> int:
    import jax

    config, split, flow = _load_run(args.run)
    out = args.output or os.path.join(args.run, f"samples-t{args.temperature:g}.png")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UserError(f"cannot write {out}: the folder {folder} does not exist.")
    _plot_samples(out, flow, split, args.n, jax.random.key(args.seed), args.temperature)
    print(f"wrote {out}")
    return 0


def cmd_list(args) -> int:
    from nux_eqx import data

    print("datasets:")
    for name, desc in data.list_datasets().items():
        print(f"  {name:<16} {desc}")
    print("models:")
    for name, spec in MODELS.items():
        print(f"  {name:<16} [{'/'.join(spec.kinds)}] {spec.description}")
    return 0


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line (no usage dump), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(v) -> bool:
    return v >= 1


def _positive_float(v) -> bool:
    return math.isfinite(v) and v > 0


# option -> (test, what it must be); checked on the values given on the command line
_RULES = {
    "steps": (_positive_int, "a positive number of steps"),
    "minutes": (_positive_float, "a positive finite number of minutes"),
    "batch_size": (_positive_int, "a positive integer"),
    "lr": (_positive_float, "a positive finite learning rate"),
    "ema": (lambda v: 0.0 <= v < 1.0, "in [0, 1) (0 turns averaging off)"),
    "seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "eval_every": (_positive_int, "a positive number of steps"),
    "checkpoint_every": (_positive_int, "a positive number of steps"),
    "n": (_positive_int, "a positive number of samples"),
    "temperature": (_positive_float, "a positive finite temperature (1: the model itself)"),
}


def _validate(parser: argparse.ArgumentParser, args) -> None:
    """Refuse bad option values with one line, before anything is read or written."""
    for name, (ok, what) in _RULES.items():
        v = getattr(args, name, None)
        if v is not None and not ok(v):
            flag = "-n" if name == "n" else "--" + name.replace("_", "-")
            getattr(parser, "commands", {}).get(args.command, parser).error(
                f"{flag} must be {what}, got {v}."
            )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nux-eqx", description="Train, evaluate and sample normalizing flows (nux_eqx).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    D = TRAIN_DEFAULTS

    t = sub.add_parser(
        "train",
        help="train a model on a bundled dataset",
        description="Train a model on a bundled dataset into a run folder. With --resume, the options "
        "left out are the run's own (from its config.json); the ones given must match, except the "
        "budget (--steps / --minutes) and --eval-every / --checkpoint-every.",
    )
    t.add_argument("--data", help=f"dataset name, see `nux-eqx list` (default {D['data']})")
    t.add_argument("--model", help=f"model name, see `nux-eqx list` (default {D['model']})")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="train this many steps in all (default: use --minutes)")
    budget.add_argument(
        "--minutes", type=float, help=f"train this long, when --steps is not given (default {D['minutes']:g})"
    )
    t.add_argument("--batch-size", type=int, help=f"examples per step (default {D['batch_size']})")
    t.add_argument(
        "--lr", type=float, help=f"Adam learning rate, halved every 1500 steps (default {D['lr']:g})"
    )
    t.add_argument(
        "--ema",
        type=float,
        help=f"keep and evaluate a moving average of the parameters with this decay; 0: off (default {D['ema']:g})",
    )
    t.add_argument(
        "--seed", type=int, help=f"seed of the init, the batches and the split (default {D['seed']})"
    )
    t.add_argument("--out", default=None, help="run folder (default runs/DATA-MODEL-seedSEED)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the run folder, with its own settings (default off: a new run, into a new folder)",
    )
    t.add_argument("--eval-every", type=int, help=f"steps between validations (default {D['eval_every']})")
    t.add_argument(
        "--checkpoint-every", type=int, help=f"steps between checkpoints (default {D['checkpoint_every']})"
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar (default: show it)")
    t.add_argument(
        "--lean-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile for memory on CPU (nux_eqx.train.LEAN_CPU_COMPILE): ~25%% less peak memory, steps "
        "0-10%% slower; --no-lean-compile: XLA's defaults (default: lean for image data on CPU, "
        "XLA's defaults for vectors)",
    )
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser(
        "eval",
        help="test NLL and bits/dim of a saved run",
        description="Print the test and validation NLL (and bits/dim for images) of a saved run as JSON.",
    )
    e.add_argument("run", help="the run folder written by `nux-eqx train`")
    e.add_argument(
        "--batch-size",
        type=int,
        default=512,
        help="examples per evaluation call; lower it to save memory (default 512)",
    )
    e.set_defaults(fn=cmd_eval)

    s = sub.add_parser(
        "sample",
        help="draw samples of a saved run into a PNG",
        description="Draw samples of a saved run into a PNG.",
    )
    s.add_argument("run", help="the run folder written by `nux-eqx train`")
    s.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="scale of the prior's noise, > 0; below 1 draws typical samples (default 1)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    s.add_argument("--output", default=None, help="the PNG to write (default RUN/samples-tTEMPERATURE.png)")
    s.set_defaults(fn=cmd_sample)
    p.commands = {"train": t, "eval": e, "sample": s}  # for the errors of `_validate`

    sub.add_parser(
        "list", help="datasets and models", description="List the datasets and models."
    ).set_defaults(fn=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; return its exit status (0 done, 2 a user error, 130 interrupted).

    `command_wall_time_s` counts from the process start when the command line is the
    process's own (`argv=None`, as the `nux-eqx` script and `python -m nux_eqx.cli` call
    it), and from this call when `argv` is given."""
    started_at = _process_start_time() if argv is None else time.time()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _validate(parser, args)
    except SystemExit as e:  # --help, or a bad command line (already printed)
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 2
    args.started_at = started_at
    try:
        return args.fn(args)
    except UserError as e:
        print(f"nux-eqx: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
