"""What mixes the features between couplings: `Roll()` (the ready models' default) against
a random permutation per layer (`permutation="random"`), on a table of any size.

    python benchmarks/coupling_mixing.py                                  # patches (63-D), affine
    python benchmarks/coupling_mixing.py --model nsf --seeds 0 1 2 --steps 2000

The galaxy table (7-D) is in `tabular.py` (`nux:affine` / `nux:nsf` there use `Roll`); this
script checks the choice on other data. Protocol: the dataset's train / valid / test split
(a tenth of train as validation where it has none), standardised with the training mean and
std; `RealNVP(8, (128, 128))` or `NeuralSplineFlow(8, (128, 128))` without ActNorm; Adam 1e-3,
batch 512 drawn from `default_rng(seed)`, init on 512 examples; validation NLL (5000
examples) every 250 steps; test NLL (10 000 examples, nats, standardised units) at the best
validation step and at the end. Writes `results/coupling_mixing_<data>_<model>.json`.
"""

import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def run(data_name: str, model: str, permutation: str, seed: int, steps: int) -> dict:
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
        flow = nux.RealNVP(8, (128, 128), permutation=permutation, actnorm=False)
    else:
        flow = nux.NeuralSplineFlow(8, (128, 128), permutation=permutation, actnorm=False)
    rng = np.random.default_rng(seed)
    flow = nux.init(flow, jnp.asarray(tr[rng.choice(len(tr), 512, replace=False)]), key=jax.random.key(seed))
    step = nux.train.make_step(optax.adam(1e-3))
    opt = step.init(flow)
    nll = jax.jit(nux.train.nll)
    valid, test = jnp.asarray(va[:5000]), jnp.asarray(te[:10_000])
    best = (float("inf"), None, 0)
    for i in range(steps):
        flow, opt, _ = step(flow, opt, jnp.asarray(tr[rng.integers(0, len(tr), 512)]))
        if (i + 1) % 250 == 0 or i + 1 == steps:
            v = float(nll(flow, valid))
            if v < best[0]:
                best = (v, float(nll(flow, test)), i + 1)
    return {"test_nll_best": best[1], "best_step": best[2], "test_nll_final": float(nll(flow, test))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="patches", help="a vector dataset of nux_eqx.data (default patches)")
    p.add_argument("--model", choices=["affine", "nsf"], default="affine")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=2000)
    a = p.parse_args(argv)
    rows, out = [], {"data": a.data, "model": a.model, "steps": a.steps, "runs": []}
    for permutation in ("roll", "random"):
        for seed in a.seeds:
            r = {"permutation": permutation, "seed": seed, **run(a.data, a.model, permutation, seed, a.steps)}
            out["runs"].append(r)
            print(
                f"{permutation:6s} seed {seed}: test NLL {r['test_nll_best']:.3f} at step {r['best_step']}",
                flush=True,
            )
        best = [r["test_nll_best"] for r in out["runs"] if r["permutation"] == permutation]
        final = [r["test_nll_final"] for r in out["runs"] if r["permutation"] == permutation]
        rows.append(
            {
                "permutation": permutation,
                "best": statistics.median(best),
                "final": statistics.median(final),
                "seeds": ", ".join(f"{v:.2f}" for v in best),
            }
        )
    print()
    cols = [
        ("permutation", "between couplings", ""),
        ("best", "test NLL at best valid (median)", ".3f"),
        ("final", "at the end (median)", ".3f"),
        ("seeds", "per seed", ""),
    ]
    print(C.table(rows, cols))
    out["medians"] = rows
    print("wrote", C.write_json(f"coupling_mixing_{a.data}_{a.model}", out))


if __name__ == "__main__":
    main()
