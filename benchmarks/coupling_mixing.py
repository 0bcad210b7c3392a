"""What mixes the features between layers, on a table of any size: for the coupling flows
`Roll()` against a random permutation per layer (`permutation="roll"` / `"random"`); for
`MaskedAutoregressiveFlow` its first layer in the data's order against every layer in a
random order (`ordering="data_first"` / `"random"`).

    python benchmarks/coupling_mixing.py                                  # patches (63-D), affine
    python benchmarks/coupling_mixing.py --model nsf --seeds 0 1 2 --steps 2000
    python benchmarks/coupling_mixing.py --model maf

The galaxy table (7-D) is in `tabular.py` (`nux:affine` / `nux:nsf` there use `Roll`); this
script checks the choice on other data. Protocol: the dataset's train / valid / test split
(a tenth of train as validation where it has none), standardised with the training mean and
std; `RealNVP(8, (128, 128))`, `NeuralSplineFlow(8, (128, 128))` or
`MaskedAutoregressiveFlow(5, (128, 128))` without ActNorm; Adam 1e-3,
batch 512 drawn from `default_rng(seed)`, init on 512 examples; validation NLL (5000
examples) every 250 steps; test NLL (10 000 examples, nats, standardised units) at the best
validation step and at the end, and the validation NLL at the end (on `patches` the test
photo differs from the training one, so validation measures the fit, test the transfer).
Writes `results/coupling_mixing_<data>_<model>.json`.
"""

import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

OPTIONS = {"affine": ("roll", "random"), "nsf": ("roll", "random"), "maf": ("data_first", "random")}


def run(data_name: str, model: str, option: str, seed: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import nux_eqx as nux
    from nux_eqx import data

    split = data.load(data_name)
    tr, va, te = (np.asarray(a, np.float32) for a in (split.train, split.valid, split.test))
    if len(va) == 0:
        va, tr = tr[: len(tr) // 10], tr[len(tr) // 10 :]
    mu, sd = tr.mean(0), tr.std(0) + 1e-6
    tr, va, te = ((a - mu) / sd for a in (tr, va, te))
    if model == "affine":
        flow = nux.RealNVP(8, (128, 128), permutation=option, actnorm=False)
    elif model == "nsf":
        flow = nux.NeuralSplineFlow(8, (128, 128), permutation=option, actnorm=False)
    else:
        flow = nux.MaskedAutoregressiveFlow(5, (128, 128), ordering=option, actnorm=False)
    rng = np.random.default_rng(seed)
    flow = nux.init(flow, jnp.asarray(tr[rng.choice(len(tr), 512, replace=False)]), key=jax.random.key(seed))
    step = nux.train.make_step(optax.adam(1e-3))
    opt = step.init(flow)
    nll = jax.jit(nux.train.nll)
    valid, test = jnp.asarray(va[:5000]), jnp.asarray(te[:10_000])
    best, v = (float("inf"), None, 0), float("nan")
    for i in range(steps):
        flow, opt, _ = step(flow, opt, jnp.asarray(tr[rng.integers(0, len(tr), 512)]))
        if (i + 1) % 250 == 0 or i + 1 == steps:
            v = float(nll(flow, valid))
            if v < best[0]:
                best = (v, float(nll(flow, test)), i + 1)
    return {
        "test_nll_best": best[1],
        "best_step": best[2],
        "test_nll_final": float(nll(flow, test)),
        "valid_nll_final": v,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="patches", help="a vector dataset of nux_eqx.data (default patches)")
    p.add_argument("--model", choices=list(OPTIONS), default="affine")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=2000)
    a = p.parse_args(argv)
    rows, out = [], {"data": a.data, "model": a.model, "steps": a.steps, "runs": []}
    arg = "ordering" if a.model == "maf" else "permutation"
    for option in OPTIONS[a.model]:
        for seed in a.seeds:
            r = {arg: option, "seed": seed, **run(a.data, a.model, option, seed, a.steps)}
            out["runs"].append(r)
            print(
                f"{option:10s} seed {seed}: test NLL {r['test_nll_best']:.3f} at step {r['best_step']}, "
                f"validation NLL at the end {r['valid_nll_final']:.3f}",
                flush=True,
            )
        mine = [r for r in out["runs"] if r[arg] == option]
        rows.append(
            {
                arg: option,
                "best": statistics.median(r["test_nll_best"] for r in mine),
                "final": statistics.median(r["test_nll_final"] for r in mine),
                "valid": statistics.median(r["valid_nll_final"] for r in mine),
                "seeds": ", ".join(f"{r['test_nll_best']:.2f}" for r in mine),
            }
        )
    print()
    cols = [
        (arg, arg, ""),
        ("best", "test NLL at best valid (median)", ".3f"),
        ("final", "at the end (median)", ".3f"),
        ("valid", "validation NLL at the end (median)", ".3f"),
        ("seeds", "per seed", ""),
    ]
    print(C.table(rows, cols))
    out["medians"] = rows
    print("wrote", C.write_json(f"coupling_mixing_{a.data}_{a.model}", out))


if __name__ == "__main__":
    main()
