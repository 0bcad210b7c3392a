"""Memory soak: many jitted training steps of a small flow in a Python loop; does the
process's resident memory (RSS) grow?

    python benchmarks/memory_soak.py                      # 20000 steps, RSS every 1000
    python benchmarks/memory_soak.py --steps 2000 --every 250

A RealNVP (4 coupling layers, MLP widths 32) trains on 8 gaussians with Adam through
`nux_eqx.train.make_step` (buffer donation on), one batch of 256 per step, a fresh key per
step. RSS (from /proc/self/statm, or `resource` where there is no /proc) is recorded after
`--warmup` steps (compilation and allocator warm-up) and then every `--every` steps. The
result (samples, growth in MB from the first post-warm-up sample to the last, and the
least-squares slope in MB per 1000 steps) is printed and written to
benchmarks/results/memory_soak.json.
"""

import argparse
import json
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import nux_eqx as nux

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def rss_mb() -> float:
    """The current resident set size of this process, in MB (peak RSS without /proc)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def soak(steps: int = 20_000, every: int = 1000, warmup: int = 1000, batch: int = 256, seed: int = 0) -> dict:
    """Run the soak and return its measurements (see the module docstring)."""
    data = np.asarray(nux.data.toy("8gaussians", seed=seed, n_train=20_000, n_valid=0, n_test=0).train)
    flow = nux.init(nux.RealNVP(4, (32, 32)), jnp.asarray(data[:1024]), key=jr.key(seed))
    step = nux.train.make_step(optax.adam(1e-3))
    opt_state = step.init(flow)
    rng = np.random.default_rng(seed)
    key = jr.key(seed + 1)
    samples: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    loss = jnp.nan
    for i in range(1, steps + 1):
        x = data[rng.integers(0, len(data), batch)]
        flow, opt_state, loss = step(flow, opt_state, x, key=jr.fold_in(key, i))
        if i >= warmup and (i - warmup) % every == 0:
            jax.block_until_ready(loss)
            samples.append((i, rss_mb()))
    jax.block_until_ready(loss)
    if not samples or samples[-1][0] != steps:
        samples.append((steps, rss_mb()))
    seconds = time.perf_counter() - t0
    s = np.array([a for a, _ in samples], np.float64)
    m = np.array([b for _, b in samples], np.float64)
    slope = float(np.polyfit(s, m, 1)[0] * 1000) if len(samples) > 1 else 0.0
    return {
        "steps": steps,
        "every": every,
        "warmup": warmup,
        "batch": batch,
        "model": "RealNVP(4, (32, 32)) on 8gaussians, adam(1e-3), make_step (donate=True)",
        "rss_mb": [[int(a), round(float(b), 2)] for a, b in samples],
        "growth_mb": float(m[-1] - m[0]),
        "slope_mb_per_1000_steps": slope,
        "peak_mb": float(m.max()),
        "final_loss": float(loss),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(RESULTS, "memory_soak.json"))
    args = parser.parse_args()
    out = soak(args.steps, args.every, args.warmup, args.batch, args.seed)
    out["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "rss_mb"}, indent=1))
    print("RSS (step, MB):", out["rss_mb"])
    print("wrote", args.out)


if __name__ == "__main__":
    main()
