"""The `nux-eqx` command: train a flow on a bundled dataset, evaluate it, sample from it.

    nux-eqx train                       # a 2-level Glow on sklearn's digits, ~2 minutes
    nux-eqx train --data 8gaussians --model nsf --steps 3000
    nux-eqx eval runs/digits-glow-seed0
    nux-eqx sample runs/digits-glow-seed0 -n 64 --temperature 0.7
    nux-eqx list

User errors (an unknown name, an existing run folder, a resume with another
configuration, a dataset that is not installed) print one clear line and exit with
status 2; nothing on disk is overwritten.
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


# --------------------------------------------------------------------------------------
# Models the command knows.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    build: Callable  # (split) -> un-initialised flow
    kinds: tuple[str, ...]  # "image" and/or "vector"
    description: str


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


def _vector(name):
    def build(split):
        import nux_eqx.models as models

        dq = split.levels
        if name == "realnvp":
            return models.RealNVP(8, (128, 128), dequantize=dq)
        if dq is not None:
            raise UserError(
                f"model {name!r} is for continuous vectors; use realnvp or glow for discrete data."
            )
        if name == "maf":
            return models.MaskedAutoregressiveFlow(5, (128, 128))
        return models.NeuralSplineFlow(8, (128, 128), K=8, B=4.0)

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
    "realnvp": ModelSpec(_vector("realnvp"), ("vector",), "RealNVP: 8 affine couplings, MLP 2x128, ActNorm"),
    "maf": ModelSpec(_vector("maf"), ("vector",), "masked autoregressive flow: 5 MADE layers 2x128"),
    "nsf": ModelSpec(
        _vector("nsf"), ("vector",), "neural spline flow: 8 rational-quadratic couplings, K=8, B=4"
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
    with open(path) as f:
        return json.load(f)


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


def _draw_samples(flow, n, key, temperature):
    import jax

    import nux_eqx as nux

    x, _ = jax.vmap(lambda k: nux.sample(flow, k, temperature=temperature))(jax.random.split(key, n))
    return np.asarray(x)


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
        for ax in axes:
            ax.set_aspect("equal")
    else:
        d = min(split.shape[-1], 4)
        fig, axes = plt.subplots(1, d - 1 if d > 1 else 1, figsize=(3.2 * max(d - 1, 1), 3), dpi=120)
        axes = np.atleast_1d(axes)
        for j, ax in enumerate(axes):
            ax.scatter(
                split.test[:n, 0], split.test[:n, j + 1 if d > 1 else 0], s=2, alpha=0.4, label="test data"
            )
            ax.scatter(x[:, 0], x[:, j + 1 if d > 1 else 0], s=2, alpha=0.4, label="samples")
            ax.set_xlabel("feature 0")
            ax.set_ylabel(f"feature {j + 1 if d > 1 else 0}")
        axes[0].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Commands.
# --------------------------------------------------------------------------------------

COMPARED = ("data", "model", "batch_size", "lr", "ema", "seed")


def cmd_train(args) -> int:
    if not 0.0 <= args.ema < 1.0:
        raise UserError(f"--ema must be in [0, 1) (0 turns averaging off), got {args.ema}.")
    run = args.out or os.path.join("runs", f"{args.data}-{args.model}-seed{args.seed}")
    config = {
        "data": args.data,
        "model": args.model,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "ema": args.ema,
        "seed": args.seed,
        "steps": args.steps,
        "minutes": None if args.steps is not None else args.minutes,
    }
    if os.path.exists(run):
        if not args.resume:
            raise UserError(
                f"run folder {run} already exists; pass --resume to continue it, or --out to train into a new folder."
            )
        old = _read_config(run)
        diff = [k for k in COMPARED if old.get(k) != config[k]]
        if diff:
            k = diff[0]
            raise UserError(
                f"cannot resume {run}: it was trained with --{k.replace('_', '-')} {old.get(k)}, this command says "
                f"{config[k]}; resume with the same settings or train into a new --out folder."
            )
    elif args.resume:
        raise UserError(f"nothing to resume: {run} does not exist.")
    split = _load_data(args.data, args.seed)
    flow = _model(args.model, split)  # validate before touching the disk

    import jax
    import optax

    import nux_eqx as nux
    from nux_eqx.train import fit

    os.makedirs(run, exist_ok=True)
    _write_json(
        os.path.join(run, "config.json"),
        {**config, "resolved": {"shape": list(split.shape), "levels": split.levels}},
    )
    key = jax.random.key(args.seed)
    steps = args.steps
    max_seconds = None if args.steps is not None else 60.0 * args.minutes
    print(
        f"training {args.model} on {args.data} ({split.shape}, {len(split.train)} train / {len(split.valid)} valid / "
        f"{len(split.test)} test) -> {run}"
    )
    t0 = time.perf_counter()
    try:
        flow, history = fit(
            flow,
            split.train,
            key=key,
            steps=steps,
            batch_size=args.batch_size,
            # halving the rate every 1500 steps: 2.118 vs 2.131 test bits/dim on digits at 5000 steps
            optimizer=optax.adam(optax.exponential_decay(args.lr, 1500, 0.5)),
            valid=split.valid,
            eval_every=args.eval_every,
            clip_norm=5.0,
            checkpoint_dir=os.path.join(run, "checkpoints"),
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            init_batches=8,
            ema=args.ema or None,
            max_seconds=max_seconds,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: the last checkpoint is in {run}/checkpoints; continue with the same command and --resume",
            file=sys.stderr,
        )
        return 130
    wall = time.perf_counter() - t0
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
        "command_wall_time_s": wall,
        "parameters": int(sum(p.size for p in jax.tree.leaves(nux.trainable(flow)[0]))),
        "versions": _versions(),
    }
    _write_json(os.path.join(run, "metrics.json"), metrics)
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
    like = _model(config["model"], split)
    path = os.path.join(run, "checkpoints", "flow.eqx")
    if not os.path.exists(path):
        path = os.path.join(run, "checkpoints", "checkpoint.eqx")
        if not os.path.exists(path):
            raise UserError(f"{run} holds no trained flow yet (no checkpoints/flow.eqx).")
        from nux_eqx.train import load_checkpoint

        return config, split, load_checkpoint(path, flow=like)["flow"]
    try:
        return config, split, nux.load(path, like)
    except nux.CheckpointError as e:
        raise UserError(str(e)) from e


def cmd_eval(args) -> int:
    import jax

    config, split, flow = _load_run(args.run)
    key = jax.random.fold_in(jax.random.key(config["seed"]), 12345)
    out = {"test": _evaluate(flow, split.test, split, key), "valid": _evaluate(flow, split.valid, split, key)}
    print(json.dumps(out, indent=2))
    return 0


def cmd_sample(args) -> int:
    import jax

    config, split, flow = _load_run(args.run)
    out = args.output or os.path.join(args.run, f"samples-t{args.temperature:g}.png")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nux-eqx", description="Train, evaluate and sample normalizing flows (nux_eqx)."
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on a bundled dataset")
    t.add_argument("--data", default="digits", help="dataset name (default digits; see `nux-eqx list`)")
    t.add_argument("--model", default="glow", help="model name (default glow; see `nux-eqx list`)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="train this many steps")
    budget.add_argument("--minutes", type=float, default=1.5, help="train this long (default 1.5)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument(
        "--ema",
        type=float,
        default=0.999,
        help="evaluate and keep a moving average of the parameters with this decay (default 0.999; 0: off)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None, help="run folder (default runs/DATA-MODEL-seedS)")
    t.add_argument("--resume", action="store_true", help="continue the run in the folder")
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--checkpoint-every", type=int, default=500)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="test NLL and bits/dim of a saved run")
    e.add_argument("run")
    e.set_defaults(fn=cmd_eval)

    s = sub.add_parser("sample", help="draw samples of a saved run into a PNG")
    s.add_argument("run")
    s.add_argument("-n", type=int, default=64)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--output", default=None)
    s.set_defaults(fn=cmd_sample)

    sub.add_parser("list", help="datasets and models").set_defaults(fn=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as e:
        print(f"nux-eqx: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
