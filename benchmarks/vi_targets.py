"""Variational inference on 2-D targets with a known log Z: nux_eqx's `fit_vi` next to
FlowJAX's `fit_to_key_based_loss(ElboLoss)`, same target, flow size, optimizer, samples
per step and number of steps, in the same run.

    PYTHONPATH=$PWD /work/bench-venv/bin/python benchmarks/vi_targets.py            # full
    PYTHONPATH=$PWD /work/bench-venv/bin/python benchmarks/vi_targets.py --quick    # smoke

Flows (2-D):

- `planar-16`: 16 planar layers in the sampling direction (nux_eqx `Planar()`, FlowJAX
  `planar_flow(invert=False)`), both tanh with the u-hat reparametrisation;
- `affine-4`: 4 affine couplings with MLPs of two hidden layers of 32 (nux_eqx
  `RealNVP(4, (32, 32))`, with ActNorm, the features swapped between couplings; FlowJAX
  `coupling_flow(Affine, flow_layers=4, nn_width=32, nn_depth=2)`).

Both libraries are evaluated by the same code: `n_eval` samples `(x, log q(x))` from the
trained flow give the ELBO (`mean log w`, `log w = log p~(x) - log q(x)`), the
importance-sampled `log Z` (`logsumexp(log w) - log n`), its standard error and the ESS.
Writes benchmarks/results/vi_targets.json (vi_targets_quick.json with --quick).
"""

import argparse
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from _common import machine, write_json

import nux_eqx as nux

# ------------------------------------------------------------------------------------------
# Targets: unnormalised log-densities of ONE point, with their exact log Z.
# ------------------------------------------------------------------------------------------

MIX_M = jnp.array([[-1.0, -0.5], [1.2, 0.8]])
MIX_S = jnp.array([0.6, 0.8])
MIX_W = jnp.array([0.55, 0.45])


def mixture(x):
    """Two isotropic Gaussians (weights .55/.45, scales .6/.8) times e^1.5: log Z = 1.5."""
    comp = -0.5 * jnp.sum((x - MIX_M) ** 2, -1) / MIX_S**2 - 2 * jnp.log(MIX_S) - math.log(2 * math.pi)
    return jax.nn.logsumexp(comp + jnp.log(MIX_W)) + 1.5


def banana(x):
    """x1 ~ N(0, 1.2^2), x2 | x1 ~ N(0.6 x1^2 - 0.8, 0.5^2), unnormalised (no constants):
    log Z = log(2 pi 1.2 0.5)."""
    return -0.5 * (x[0] / 1.2) ** 2 - 0.5 * ((x[1] - 0.6 * x[0] ** 2 + 0.8) / 0.5) ** 2


TARGETS = {
    "mixture": (mixture, 1.5),
    "banana": (banana, math.log(2 * math.pi * 1.2 * 0.5)),
}


# ------------------------------------------------------------------------------------------
# Flows
# ------------------------------------------------------------------------------------------


def nux_flow(name):
    if name == "planar-16":
        return nux.Sequential(*[nux.Planar() for _ in range(16)], nux.UnitGaussianPrior())
    return nux.RealNVP(n_layers=4, hidden_layer_sizes=(32, 32))


def flowjax_flow(name, key):
    from flowjax.bijections import Affine
    from flowjax.distributions import StandardNormal
    from flowjax.flows import coupling_flow, planar_flow

    base = StandardNormal((2,))
    if name == "planar-16":
        return planar_flow(key, base_dist=base, flow_layers=16, invert=False)
    return coupling_flow(
        key, base_dist=base, transformer=Affine(), flow_layers=4, nn_width=32, nn_depth=2, invert=False
    )


def n_params(tree):
    return int(sum(a.size for a in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))))


def evaluate(x, log_q, log_p, log_z_true):
    log_w = np.asarray(jax.vmap(log_p)(x), np.float64) - np.asarray(log_q, np.float64)
    n = log_w.size
    m = log_w.max()
    log_sum = m + math.log(np.sum(np.exp(log_w - m)))
    ess = math.exp(2 * log_sum - (2 * m + math.log(np.sum(np.exp(2 * (log_w - m))))))
    log_z = log_sum - math.log(n)
    return {
        "elbo": float(np.mean(log_w)),
        "elbo_gap": float(log_z_true - np.mean(log_w)),
        "log_z": log_z,
        "log_z_error": log_z - log_z_true,
        "log_z_stderr": math.sqrt(max(1 / ess - 1 / n, 0.0)),
        "ess": ess,
        "ess_fraction": ess / n,
    }


# ------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------


def run_nux(target, flow_name, args):
    log_p, log_z_true = TARGETS[target]
    opt = optax.adam(optax.cosine_decay_schedule(args.lr, args.steps))
    t0 = time.perf_counter()
    flow, res = nux.train.fit_vi(
        nux_flow(flow_name),
        log_p,
        key=jr.key(args.seed),
        steps=args.steps,
        shape=(2,),
        n_samples=args.n_samples,
        optimizer=opt,
        n_importance=args.n_eval,
        progress=False,
        steps_per_dispatch=args.dispatch,
    )
    train_s = res["wall_time"]
    x, log_q = jax.jit(jax.vmap(lambda k: nux.sample(flow, k)))(
        jr.split(jr.key(10_000 + args.seed), args.n_eval)
    )
    out = evaluate(x, log_q, log_p, log_z_true)
    out.update(
        train_s=train_s,
        total_s=time.perf_counter() - t0,
        params=n_params(nux.trainable(flow)[0]),
        final_train_elbo=float(np.mean(res["elbo"][-100:])),
        fit_vi_log_z=res["log_z"],
        fit_vi_ess=res["ess"],
    )
    return out


def run_flowjax(target, flow_name, args):
    from flowjax.train import fit_to_key_based_loss
    from flowjax.train.losses import ElboLoss

    log_p, log_z_true = TARGETS[target]
    opt = optax.adam(optax.cosine_decay_schedule(args.lr, args.steps))
    k_flow, k_train = jr.split(jr.key(args.seed))
    t0 = time.perf_counter()
    dist = flowjax_flow(flow_name, k_flow)
    loss = ElboLoss(log_p, num_samples=args.n_samples)
    dist, losses = fit_to_key_based_loss(
        k_train, dist, loss_fn=loss, steps=args.steps, optimizer=opt, show_progress=False
    )
    losses = np.asarray(losses)
    train_s = time.perf_counter() - t0
    x, log_q = eqx.filter_jit(lambda d, k: d.sample_and_log_prob(k, (args.n_eval,)))(
        dist, jr.key(10_000 + args.seed)
    )
    out = evaluate(x, log_q, log_p, log_z_true)
    out.update(
        train_s=train_s,
        total_s=time.perf_counter() - t0,
        params=n_params(dist),
        final_train_elbo=float(-np.mean(losses[-100:])),
    )
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps, to check that it runs")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--n-eval", type=int, default=100_000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dispatch", type=int, default=10, help="nux_eqx steps_per_dispatch")
    p.add_argument("--targets", default="mixture,banana")
    p.add_argument("--flows", default="planar-16,affine-4")
    args = p.parse_args()
    if args.quick:
        args.steps, args.n_eval = 50, 5000
    rows = []
    for target in args.targets.split(","):
        for flow_name in args.flows.split(","):
            for lib, fn in [("nux_eqx", run_nux), ("flowjax", run_flowjax)]:
                r = fn(target, flow_name, args)
                r.update(library=lib, target=target, flow=flow_name, log_z_true=TARGETS[target][1])
                rows.append(r)
                print(
                    f"{target:8s} {flow_name:10s} {lib:8s} ELBO {r['elbo']:.4f} (gap {r['elbo_gap']:.4f}) "
                    f"log Z err {r['log_z_error']:+.4f} +- {r['log_z_stderr']:.4f} "
                    f"ESS {100 * r['ess_fraction']:.1f}% train {r['train_s']:.1f}s",
                    flush=True,
                )
    print()
    print(
        "| target | flow | library | params | ELBO | ELBO gap | IS log Z - truth (stderr) | ESS / n | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['target']} | {r['flow']} | {r['library']} | {r['params']} | {r['elbo']:.4f} | "
            f"{r['elbo_gap']:.4f} | {r['log_z_error']:+.4f} ({r['log_z_stderr']:.4f}) | "
            f"{100 * r['ess_fraction']:.1f}% | {r['train_s']:.1f} |"
        )
    try:
        import flowjax

        fj = flowjax.__version__
    except Exception:  # pragma: no cover
        fj = None
    payload = {
        "config": {k: v for k, v in vars(args).items()},
        "versions": {"jax": jax.__version__, "flowjax": fj, "nux_eqx": nux.__version__},
        "machine": machine(),
        "rows": rows,
    }
    path = write_json("vi_targets_quick" if args.quick else "vi_targets", payload)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
