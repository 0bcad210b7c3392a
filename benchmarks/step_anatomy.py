"""One training step of nux_eqx's ready vector flows and FlowJAX's, side by side, in ONE
process: what each compiles to and what a user's loop pays per step.

    /work/bench-venv/bin/python benchmarks/step_anatomy.py            # ~3 min
    /work/bench-venv/bin/python benchmarks/step_anatomy.py --models maf

For each model (the tabular benchmark's architectures: `affine` 8 couplings, `nsf` 8
spline couplings K = 8, `maf` 5 MADE layers; MLPs 2 x 128; 7-D inputs, batch 512) and
library: the number of parameter arrays; the jaxpr size of `value_and_grad` of the mean
NLL (equations, with the primitives whose counts differ most); the compiled program
(fusions, dot products, gathers/scatters, while loops: FlowJAX scans its stacked layers, so
its loop body is counted once but runs once per layer); and the step time, interleaved
between the libraries (rounds of 50 steps, the median round), in three loops a user might
write: `jax.jit` on the parameter arrays, `eqx.filter_jit` on the model, and (nux_eqx)
`nux_eqx.train.make_step`; and the log-density throughput on 10 000 points (jitted, the
median of 11 interleaved calls). Results go to `benchmarks/results/step_anatomy.json`.
"""

import argparse
import collections
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

MODELS = ("affine", "nsf", "maf")
BATCH, DIM = 512, 7


def build(model):
    import jax.numpy as jnp
    import jax.random as jr
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow, masked_autoregressive_flow

    import nux_eqx as nux

    x = jr.normal(jr.key(0), (BATCH, DIM))
    base = Normal(jnp.zeros(DIM))
    kw = {"nn_width": 128, "nn_depth": 2}
    if model == "affine":
        nf = nux.RealNVP(8, (128, 128), actnorm=False)
        fj = coupling_flow(jr.key(1), base_dist=base, flow_layers=8, **kw)
    elif model == "nsf":
        nf = nux.NeuralSplineFlow(8, (128, 128), K=8, B=4.0, actnorm=False)
        spline = RationalQuadraticSpline(knots=7, interval=4)
        fj = coupling_flow(jr.key(1), base_dist=base, transformer=spline, flow_layers=8, **kw)
    else:
        nf = nux.MaskedAutoregressiveFlow(5, (128, 128), actnorm=False)
        fj = masked_autoregressive_flow(jr.key(1), base_dist=base, flow_layers=5, **kw)
    return x, nux.init(nf, x, key=jr.key(2)), fj


def losses():
    import paramax

    import nux_eqx as nux

    return {
        "nux_eqx": lambda flow, x: nux.train.nll(flow, x),
        "flowjax": lambda flow, x: -paramax.unwrap(flow).log_prob(x).mean(),
    }


def primitive_counts(fn, *args):
    import jax

    counts = collections.Counter()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            counts[eqn.primitive.name] += 1
            for v in eqn.params.values():
                inner = getattr(v, "jaxpr", v)
                if hasattr(inner, "eqns"):
                    walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return counts


def anatomy(flow, loss, x):
    import equinox as eqx
    import jax

    params, static = eqx.partition(flow, eqx.is_inexact_array)

    def vg(p, x):
        return jax.value_and_grad(lambda q: loss(eqx.combine(q, static), x))(p)

    counts = primitive_counts(vg, params, x)
    hlo = jax.jit(vg).lower(params, x).compile().as_text()
    return {
        "arrays": len(jax.tree.leaves(params)),
        "jaxpr_eqns": sum(counts.values()),
        "primitives": dict(counts),
        "fusions": hlo.count("fusion("),
        "dots": hlo.count(" dot("),
        "gathers": hlo.count(" gather("),
        "scatters": hlo.count(" scatter("),
        "while_loops": hlo.count(" while("),
    }


def steppers(flow, loss, x, lib):
    """name -> (state, step(state) -> state, sync(state))"""
    import equinox as eqx
    import jax
    import optax

    import nux_eqx as nux

    opt = optax.adam(1e-3)
    params, static = eqx.partition(flow, eqx.is_inexact_array)

    @jax.jit
    def jit_step(p, o, x):
        value, g = jax.value_and_grad(lambda q: loss(eqx.combine(q, static), x))(p)
        u, o = opt.update(g, o, p)
        return optax.apply_updates(p, u), o, value

    @eqx.filter_jit
    def filter_step(f, o, x):
        value, g = eqx.filter_value_and_grad(loss)(f, x)
        u, o = opt.update(g, o, eqx.filter(f, eqx.is_inexact_array))
        return eqx.apply_updates(f, u), o, value

    out = {
        "jax.jit": ((params, opt.init(params)), lambda s: jit_step(s[0], s[1], x)[:2]),
        "eqx.filter_jit": (
            (flow, opt.init(eqx.filter(flow, eqx.is_inexact_array))),
            lambda s: filter_step(s[0], s[1], x)[:2],
        ),
    }
    if lib == "nux_eqx":
        tstep = nux.train.make_step(opt)
        out["make_step"] = ((flow, tstep.init(flow)), lambda s: tstep(s[0], s[1], x)[:2])
    return out


def time_interleaved(runs: dict, rounds: int = 7, steps: int = 50) -> dict:
    import jax

    state = {k: r[0] for k, r in runs.items()}
    for k, (_, step) in runs.items():  # compile and warm up
        for _ in range(10):
            state[k] = step(state[k])
        jax.block_until_ready(state[k])
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for k, (_, step) in runs.items():
            t = time.perf_counter()
            s = state[k]
            for _ in range(steps):
                s = step(s)
            jax.block_until_ready(s)
            state[k] = s
            times[k].append((time.perf_counter() - t) / steps * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def log_prob_throughput(flows: dict, loss: dict, calls: int = 11, n: int = 10_000) -> dict:
    """Points per second of each library's jitted batch log-density, interleaved."""
    import equinox as eqx
    import jax
    import jax.random as jr

    x = jr.normal(jr.key(3), (n, DIM))
    fns = {lib: eqx.filter_jit(lambda f, x, lib=lib: -loss[lib](f, x)) for lib in flows}
    for lib, f in flows.items():
        jax.block_until_ready(fns[lib](f, x))
    times = {lib: [] for lib in flows}
    for _ in range(calls):
        for lib, f in flows.items():
            t = time.perf_counter()
            jax.block_until_ready(fns[lib](f, x))
            times[lib].append(time.perf_counter() - t)
    return {lib: n / statistics.median(v) for lib, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--tag", default=None, help="suffix of the results file")
    a = p.parse_args(argv)
    if not C.has("flowjax"):
        sys.exit("step_anatomy.py needs FlowJAX: bash benchmarks/install_peers.sh")
    print(f"load average before: {C.load_average()}  ({os.cpu_count()} cpus)")
    out = {"models": {}}
    for model in a.models:
        x, nf, fj = build(model)
        loss = losses()
        res = {lib: anatomy(flow, loss[lib], x) for lib, flow in (("nux_eqx", nf), ("flowjax", fj))}
        # before the steps: make_step donates the flow's buffers
        throughput = log_prob_throughput({"nux_eqx": nf, "flowjax": fj}, loss)
        runs = {}
        for lib, flow in (("nux_eqx", nf), ("flowjax", fj)):
            for name, r in steppers(flow, loss[lib], x, lib).items():
                runs[f"{lib} {name}"] = r
        ms = time_interleaved(runs)
        for lib, v in throughput.items():
            res[lib]["log_prob_pts_s"] = v
        for key, v in ms.items():
            lib, name = key.split(" ", 1)
            res[lib].setdefault("step_ms", {})[name] = v
        out["models"][model] = res
        n, f = res["nux_eqx"], res["flowjax"]
        print(f"\n## {model}")
        print("| | nux_eqx | FlowJAX |\n|---|---|---|")
        for k in ("arrays", "jaxpr_eqns", "fusions", "dots", "gathers", "scatters", "while_loops"):
            print(f"| {k} | {n[k]} | {f[k]} |")
        for name in ("jax.jit", "eqx.filter_jit"):
            a_, b_ = n["step_ms"][name], f["step_ms"][name]
            print(f"| step ms, {name} | {a_:.2f} | {b_:.2f} (nux/FlowJAX {a_ / b_:.2f}) |")
        print(f"| step ms, make_step | {n['step_ms']['make_step']:.2f} | |")
        lp_n, lp_f = n["log_prob_pts_s"], f["log_prob_pts_s"]
        print(f"| log-prob points/s | {lp_n:.3g} | {lp_f:.3g} (nux/FlowJAX {lp_n / lp_f:.2f}) |")
        diff = sorted(
            set(n["primitives"]) | set(f["primitives"]),
            key=lambda k: -abs(n["primitives"].get(k, 0) - f["primitives"].get(k, 0)),
        )[:8]
        print(
            "primitives that differ most (nux_eqx / FlowJAX, FlowJAX's loop body once): "
            + ", ".join(f"{k} {n['primitives'].get(k, 0)}/{f['primitives'].get(k, 0)}" for k in diff)
        )
    print(f"\nload average after: {C.load_average()}")
    print("wrote", C.write_json(f"step_anatomy_{a.tag}" if a.tag else "step_anatomy", out))


if __name__ == "__main__":
    main()
