"""Data-parallel training step time on 1, 2 and 4 devices (`nux_eqx.train.fit`'s sharding).

    python benchmarks/data_parallel.py            # RealNVP on galaxy + Glow on digits
    python benchmarks/data_parallel.py --quick    # RealNVP only (~1 minute)

Each (model, device count) runs in its own process with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (on a GPU machine: the first N
GPUs). The step is `make_step` on a replicated flow and a batch split over a 1-D mesh,
exactly what `fit` does; `step ms` is the median of 30 synchronised steps after 5 warm-up
steps. On a CPU the N virtual devices share the same cores, so the table measures the
cost of splitting the batch and all-reducing the gradients, not a speed-up.
Results: `benchmarks/results/data_parallel[_quick].json`.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

MODELS = {
    "realnvp": "RealNVP(8, (128, 128)), galaxy 7-D, batch 512",
    "glow": "MultiscaleGlow(2, 4, width 64), digits 8x8, batch 64",
}


def job(model: str, n_dev: int, cfg: dict) -> dict:
    import equinox as eqx
    import jax
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import nux_eqx as nux

    devices = jax.devices()[:n_dev]
    assert len(devices) == n_dev, f"asked for {n_dev} devices, have {jax.devices()}"
    if model == "realnvp":
        x = C.galaxy_arrays(0)["train"]
        flow, batch = nux.RealNVP(8, (128, 128), actnorm=False), 512
    else:
        x = C.digits_arrays()["train"][..., None]  # levels 0..16, (n, 8, 8, 1)
        flow, batch = nux.MultiscaleGlow(2, 4, 64, dequantize=17), 64
    mesh = Mesh(np.asarray(devices), ("batch",))
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
    step = nux.train.make_step(optax.adam(1e-3))
    flow = nux.init(flow, x[:batch], key=jax.random.key(0))
    state = eqx.filter_shard((flow, step.init(flow)), replicated)
    rng = np.random.default_rng(0)
    batches = [jax.device_put(x[rng.choice(len(x), batch, replace=False)], split) for _ in range(8)]

    def one(i):
        nonlocal state
        f, o, loss = step(state[0], state[1], batches[i % 8], key=jax.random.key(i))
        state = (f, o)
        return loss

    t0 = time.perf_counter()
    one(0).block_until_ready()
    first = time.perf_counter() - t0
    for i in range(5):
        one(i).block_until_ready()
    times = []
    for i in range(cfg["steps"]):
        t0 = time.perf_counter()
        one(i).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {
        "model": MODELS[model],
        "devices": n_dev,
        "first_step_s": first,
        "step_ms": 1e3 * float(np.median(times)),
        "examples_per_s": batch / float(np.median(times)),
        "peak_rss_mb": C.peak_rss_mb(),
    }


COLS = [
    ("model", "model", "s"),
    ("devices", "devices", "d"),
    ("first_step_s", "first step s", ".2f"),
    ("step_ms", "step ms", ".2f"),
    ("vs_one", "vs 1 device", ".2f"),
    ("examples_per_s", "examples/s", ".4g"),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="RealNVP only")
    p.add_argument("--steps", type=int, default=30)
    a = p.parse_args(argv)
    models = ["realnvp"] if a.quick else list(MODELS)
    jobs = [f"{m}:{n}" for m in models for n in (1, 2, 4)]
    print(f"load average before: {C.load_average()}  ({os.cpu_count()} cpus)")
    results = C.run_workers(os.path.abspath(__file__), jobs, {"steps": a.steps})
    rows = [r for r in results if "error" not in r]
    for r in rows:
        base = next((b for b in rows if b["model"] == r["model"] and b["devices"] == 1), None)
        r["vs_one"] = C.ratio(r["step_ms"], base["step_ms"]) if base else None
    print()
    print(C.table(rows, COLS))
    name = "data_parallel_quick" if a.quick else "data_parallel"
    out = {
        "command": "python benchmarks/data_parallel.py" + (" --quick" if a.quick else ""),
        "results": results,
    }
    print("wrote", C.write_json(name, out))


if __name__ == "__main__":
    if "--worker" in sys.argv:
        argv = sys.argv[1:]
        name = argv[argv.index("--worker") + 1]
        model, n = name.split(":")
        # before JAX starts: N host devices (a GPU machine uses its real devices)
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
        C.worker_main(argv, {name: lambda cfg: job(model, int(n), cfg)})
    else:
        main()
