"""Continuous (FFJORD) and residual flows on 8gaussians, next to zuko's CNF and RealNVP;
a residual flow on digits next to Glow.

    python benchmarks/continuous_residual.py --quick          # a few hundred steps each
    python benchmarks/continuous_residual.py                  # the full toy run
    python benchmarks/continuous_residual.py --jobs nux:residual-digits --tag residual_digits

Each (library, model) job runs in its own worker process, one after another. The nux_eqx
jobs run with this interpreter (it needs `diffrax`: `pip install "nux_eqx[continuous]"`);
zuko's with `--peer-python` (default `/work/bench-venv/bin/python`, see
`install_peers.sh`), with `PYTHONPATH` pointing at this checkout so that both libraries
read the same data from `nux_eqx.data`.

Toy protocol (`benchmarks/train_targets.py toy`): `nux_eqx.data.load("8gaussians", seed=0,
n_train=100_000, n_valid=10_000, n_test=100_000)`, data units (not standardised), batch
512 drawn from shuffled epochs (`default_rng(1)`, the same order for every library), Adam
with 200 warm-up steps and a cosine decay to 1% of the peak, test NLL in nats on the
first `n_test_eval` test points (the exact NLL of the generating mixture is 2.831).

- `nux:ffjord`: `Sequential(ContinuousFlow(hidden_layer_sizes=(64, 64)),
  UnitGaussianPrior())`, exact trace (2-D), Tsit5, rtol = atol = 1e-5,
  RecursiveCheckpointAdjoint.
- `zuko:cnf`: `zuko.flows.CNF(2, hidden_features=(64, 64))`: an ELU MLP of (x, 3 sin/cos
  time frequencies), exact trace, its adaptive Dormand-Prince solver with atol = 1e-6,
  rtol = 1e-5 and its adaptive checkpoint adjoint (zuko's defaults), one torch thread.
  It runs ~5x slower per step here, so it trains for `--peer-steps` (its own complete
  schedule); `nux:ffjord-peer-steps` is nux_eqx with the same step budget.
- `nux:residual`: 8 blocks `ActNorm() -> ResidualFlow((64, 64))` (Lipschitz coefficient
  0.9 per layer, exact 2-D log-determinant while training), then `UnitGaussianPrior()`;
  `update_spectral_state` after training.
- `nux:realnvp`: `RealNVP(8, (64, 64))` with the same loop.
- `nux:residual-digits`: sklearn's 8x8 digits (17 levels) with the CLI's protocol and
  budget (`nux-eqx train --data digits --seconds 90`): uniform dequantisation, logit,
  then 4 blocks `ActNorm -> ResidualFlow(n_channels=32)` on (8, 8, 1) images with the
  Russian-roulette log-determinant while training (`stochastic_log_det`), exact for the
  test bits/dim. Glow's 1.945 bits/dim is the CLI's default model under the same budget
  (docs/performance.md).

Writes `benchmarks/results/continuous_residual[_quick].json` and prints a table.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as C  # noqa: E402

REPO = os.path.dirname(HERE)
TRUE_NLL = 2.831


def _toy_data(cfg):
    from nux_eqx.data import load

    split = load("8gaussians", seed=0, n_train=100_000, n_valid=10_000, n_test=100_000)
    return (
        np.asarray(split.train, np.float32),
        np.asarray(split.valid, np.float32),
        np.asarray(split.test[: cfg["n_test_eval"]], np.float32),
    )


def _warmup(cfg):
    return min(200, cfg["steps"] // 10)


def _lr(cfg, i):
    warm, total, lr = _warmup(cfg), cfg["steps"], cfg["lr"]
    if i < warm:
        return lr * i / warm
    frac = (i - warm) / max(total - warm, 1)
    return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


# ------------------------------------------------------------------------------------------
# nux_eqx workers
# ------------------------------------------------------------------------------------------


def _nux_model(name):
    import nux_eqx as nux

    if name == "ffjord":
        return nux.Sequential(nux.ContinuousFlow(hidden_layer_sizes=(64, 64)), nux.UnitGaussianPrior())
    if name == "residual":
        blocks = []
        for _ in range(8):
            blocks += [nux.ActNorm(), nux.ResidualFlow((64, 64))]
        return nux.Sequential(*blocks, nux.UnitGaussianPrior())
    if name == "realnvp":
        return nux.RealNVP(8, (64, 64))
    raise ValueError(name)


def _nux_toy(cfg, name):
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import optax

    import nux_eqx as nux
    from nux_eqx.train import make_step, nll

    train, valid, test = _toy_data(cfg)
    flow = nux.init(_nux_model(name), jnp.asarray(train[:2048]), key=jr.key(cfg["seed"]))
    # the same schedule as `_lr` (zuko's loop)
    opt = optax.adam(
        optax.warmup_cosine_decay_schedule(0.0, cfg["lr"], _warmup(cfg), cfg["steps"], cfg["lr"] * 0.01)
    )
    step = make_step(opt)
    opt_state = step.init(flow)
    batches = C.epoch_batches(len(train), cfg["batch_size"], 1)
    t0 = time.perf_counter()
    flow, opt_state, loss = step(flow, opt_state, jnp.asarray(train[next(batches)]), key=jr.key(0))
    jax.block_until_ready(loss)
    first = time.perf_counter() - t0
    losses = [float(loss)]
    done = cfg["steps"]
    for i in range(1, cfg["steps"]):
        flow, opt_state, loss = step(flow, opt_state, jnp.asarray(train[next(batches)]), key=jr.key(i))
        if i % 100 == 0:
            losses.append(float(loss))
            if time.perf_counter() - t0 > cfg["max_seconds"]:
                done = i + 1
                break
    jax.block_until_ready(loss)
    wall = time.perf_counter() - t0
    if name == "residual":
        flow = nux.update_spectral_state(flow, 50)
    ev = jax.jit(lambda f, x: nll(f, x))
    t1 = time.perf_counter()
    chunks = [
        float(ev(flow, jnp.asarray(test[i : i + 5000]))) * len(test[i : i + 5000])
        for i in range(0, len(test), 5000)
    ]
    eval_s = time.perf_counter() - t1
    out = {
        "library": "nux_eqx",
        "model": name,
        "test_nll": sum(chunks) / len(test),
        "steps": done,
        "train_wall_s": wall,
        "first_step_s": first,
        "steps_per_s": (done - 1) / max(wall - first, 1e-9),
        "eval_s": eval_s,
        "loss_every_100": losses,
    }
    if name == "residual":
        bounds = [float(b.lipschitz_bound()) for b in flow.layers if isinstance(b, nux.ResidualFlow)]
        out["lipschitz_bound_max"] = max(bounds)
    return out


def job_nux_ffjord(cfg):
    return _nux_toy(cfg, "ffjord")


def job_nux_ffjord_peer_steps(cfg):
    """FFJORD with zuko's (shorter) step budget: the equal-steps comparison."""
    out = _nux_toy({**cfg, "steps": cfg["peer_steps"]}, "ffjord")
    out["model"] = "ffjord (peer steps)"
    return out


def job_nux_residual(cfg):
    return _nux_toy(cfg, "residual")


def job_nux_realnvp(cfg):
    return _nux_toy(cfg, "realnvp")


def job_nux_residual_digits(cfg):
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import optax

    import nux_eqx as nux
    from nux_eqx.data import digits
    from nux_eqx.train import bits_per_dim, fit, nll

    split = digits()
    blocks = []
    for _ in range(cfg["digits_blocks"]):
        blocks += [nux.ActNorm(), nux.ResidualFlow(n_channels=32)]
    model = nux.Sequential(
        nux.UniformDequantization(scale=17.0), nux.Logit(), *blocks, nux.UnitGaussianPrior()
    )
    model = nux.stochastic_log_det(model)
    t0 = time.perf_counter()
    flow, hist = fit(
        model,
        split,
        key=jr.key(cfg["seed"]),
        batch_size=64,
        optimizer=optax.adam(1e-3),
        max_seconds=cfg["digits_seconds"],
        eval_every=250,
        progress=False,
    )
    wall = time.perf_counter() - t0
    flow = nux.update_spectral_state(nux.stochastic_log_det(flow, False), 50)
    x = jnp.asarray(split.test)
    ev = jax.jit(lambda f, xb, k: nll(f, xb, key=k))
    vals = [float(ev(flow, x, jr.key(100 + r))) for r in range(4)]
    dims = math.prod(x.shape[1:])
    return {
        "library": "nux_eqx",
        "model": f"residual-digits ({cfg['digits_blocks']} blocks, 32 channels)",
        "test_bpd": float(bits_per_dim(float(np.mean(vals)), dims)),
        "steps": hist["steps"],
        "train_wall_s": wall,
        "steps_per_s": hist["steps"] / wall,
        "reference": "Glow (the CLI's default model) 1.945 bits/dim at 90 s, docs/performance.md",
    }


# ------------------------------------------------------------------------------------------
# zuko worker
# ------------------------------------------------------------------------------------------


def job_zuko_cnf(cfg):
    import torch
    import zuko

    torch.manual_seed(cfg["seed"])
    # one thread: on the shared machine more threads oversubscribe the cores (measured
    # 15-30 s per step with 2 threads under load, 1.25 s with 1)
    torch.set_num_threads(1)
    cfg = {**cfg, "steps": cfg["peer_steps"]}
    train, valid, test = _toy_data(cfg)
    flow = zuko.flows.CNF(2, hidden_features=(64, 64))
    opt = torch.optim.Adam(flow.parameters(), lr=cfg["lr"])
    batches = C.epoch_batches(len(train), cfg["batch_size"], 1)
    xt = torch.from_numpy(train)
    t0 = time.perf_counter()
    first, losses, done = None, [], cfg["steps"]
    for i in range(cfg["steps"]):
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, i)
        x = xt[torch.from_numpy(next(batches))]
        loss = -flow().log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i == 0:
            first = time.perf_counter() - t0
        if i % 100 == 0:
            losses.append(float(loss))
            if i > 0 and time.perf_counter() - t0 > cfg["max_seconds"]:
                done = i + 1
                break
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    with torch.no_grad():
        te = torch.from_numpy(test)
        tot = sum(float(-flow().log_prob(te[i : i + 5000]).sum()) for i in range(0, len(te), 5000))
    return {
        "library": "zuko",
        "model": "cnf",
        "test_nll": tot / len(test),
        "steps": done,
        "train_wall_s": wall,
        "first_step_s": first,
        "steps_per_s": (done - 1) / max(wall - first, 1e-9),
        "eval_s": time.perf_counter() - t1,
        "loss_every_100": losses,
    }


JOBS = {
    "nux:ffjord": job_nux_ffjord,
    "nux:ffjord-peer-steps": job_nux_ffjord_peer_steps,
    "zuko:cnf": job_zuko_cnf,
    "nux:residual": job_nux_residual,
    "nux:realnvp": job_nux_realnvp,
    "nux:residual-digits": job_nux_residual_digits,
}


def _run(jobs, cfg, peer_python, timeout_s, parallel=1):
    """Run each job in its own worker process, at most `parallel` at a time, in order."""
    results = {}
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory(prefix="nux_bench_") as tmp:
        cfg_path = os.path.join(tmp, "config.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        pending, running = list(jobs), {}
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                out = os.path.join(tmp, job.replace(":", "_") + ".json")
                py = peer_python if job.startswith("zuko:") else sys.executable
                cmd = [py, os.path.abspath(__file__), "--worker", job, "--config", cfg_path, "--out", out]
                proc = subprocess.Popen(
                    cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
                )
                running[job] = (proc, out, C.load_average(), time.perf_counter())
            time.sleep(1.0)
            for job, (proc, out, load, t0) in list(running.items()):
                timed_out = time.perf_counter() - t0 > timeout_s
                if proc.poll() is None and not timed_out:
                    continue
                if timed_out and proc.poll() is None:
                    proc.kill()
                err = proc.stderr.read() if proc.stderr else ""
                if proc.returncode == 0 and os.path.exists(out):
                    with open(out) as f:
                        res = json.load(f)
                else:
                    why = (
                        "timed out"
                        if timed_out
                        else f"exited with {proc.returncode} (negative: killed by signal)"
                    )
                    res = {"job": job, "error": (err or why)[-3000:], "returncode": proc.returncode}
                res["load_before"] = load
                res["process_wall_s"] = time.perf_counter() - t0
                results[job] = res
                del running[job]
                brief = {k: res.get(k) for k in ("test_nll", "test_bpd", "steps", "train_wall_s") if k in res}
                status = (
                    "ok " + json.dumps(brief)
                    if "error" not in res
                    else "FAILED: " + res["error"].strip()[-300:]
                )
                print(
                    f"  {job:22s} {res['process_wall_s']:7.1f} s  (load {load[0]:.1f})  {status}", flush=True
                )
    return [results[j] for j in jobs]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        C.worker_main(argv, JOBS)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="300 steps, 5k test points, 20 s digits")
    p.add_argument("--jobs", default="nux:ffjord,zuko:cnf,nux:ffjord-peer-steps,nux:residual,nux:realnvp")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--peer-steps", type=int, default=1200, help="zuko's steps (its CNF is slower per step)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-test-eval", type=int, default=20_000)
    p.add_argument("--digits-seconds", type=float, default=90.0)
    p.add_argument("--digits-blocks", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-python", default="/work/bench-venv/bin/python")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--max-seconds", type=float, default=1e9, help="stop each toy job's training after this")
    p.add_argument("--parallel", type=int, default=1, help="workers at a time (they then share the CPUs)")
    p.add_argument(
        "--tag", default=None, help="name of the results file (default continuous_residual[_quick])"
    )
    a = p.parse_args(argv)
    cfg = {
        "steps": 300 if a.quick else a.steps,
        "peer_steps": 100 if a.quick else a.peer_steps,
        "batch_size": a.batch_size,
        "lr": a.lr,
        "n_test_eval": 5000 if a.quick else a.n_test_eval,
        "digits_seconds": 20.0 if a.quick else a.digits_seconds,
        "digits_blocks": a.digits_blocks,
        "seed": a.seed,
        "max_seconds": a.max_seconds,
    }
    jobs = [j.strip() for j in a.jobs.split(",") if j.strip()]
    for j in jobs:
        if j not in JOBS:
            raise SystemExit(f"unknown job {j!r}; choose from {sorted(JOBS)}")
    print(f"config: {cfg}", flush=True)
    rows = _run(jobs, cfg, a.peer_python, a.timeout, a.parallel)
    for r in rows:
        if "test_nll" in r:
            r["gap_to_2.831"] = r["test_nll"] - TRUE_NLL
    print(
        C.table(
            rows,
            [
                ("job", "job", ""),
                ("test_nll", "test NLL (nats)", ".4f"),
                ("gap_to_2.831", "gap to 2.831", "+.4f"),
                ("test_bpd", "test bits/dim", ".3f"),
                ("steps", "steps", ""),
                ("train_wall_s", "train wall s", ".1f"),
                ("steps_per_s", "steps/s", ".2f"),
                ("eval_s", "eval s", ".1f"),
            ],
        )
    )
    name = a.tag or "continuous_residual" + ("_quick" if a.quick else "")
    path = C.write_json(
        name,
        {
            "task": "8gaussians test NLL (nats, data units; exact 2.831) and digits bits/dim",
            "config": cfg,
            "rows": rows,
            "command": "python benchmarks/continuous_residual.py " + " ".join(argv),
            "note": f"{a.parallel} job(s) at a time on this machine; each row's load_before is the load average when it started",
        },
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
