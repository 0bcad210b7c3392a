"""Glow, Glow with a learned factor-out prior, and a max-pooling (SurVAE) flow on
scikit-learn's 8x8 digits, each trained for the same wall time; prints test bits/dim.

    python examples/digits_surjective.py --seconds 90

The three models:

- (a) `MultiscaleGlow(2, 4, 64, dequantize=17)`: the factored-out half of each level is
  scored by a unit Gaussian;
- (b) the same with `factor_out="chain_rule"`: Glow's learned conditional Gaussian on the
  factored-out half given the kept half (`ChainRule` + `ConditionalGaussianPrior`);
- (c) a SurVAE flow: dequantise, logit, squeeze, Glow blocks at 4x4x4, unsqueeze, then
  `MaxPool` (8x8x1 -> 4x4x1, the three discarded values of each 2x2 block scored exactly
  by a learned model of the argmax position and the gaps below the max, conditioned on
  the pooled image), squeeze, Glow blocks at 2x2x4, and a unit Gaussian.

Each model gets the same wall time, its compilation included. Every model starts with
uniform dequantisation (17 levels) and a logit, so `-log_prob / (64 ln 2)` is the
bits/dim of the discrete pixels (a lower bound's estimate, with one dequantisation
sample per digit). Training: `nux_eqx.train.fit` with Adam, gradient clipping, batch 64,
a 90/10 split of the training digits to keep the best checkpoint; the test split is the
seeded 80/20 one of `nux_eqx.data.digits()`.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nux_eqx as nux
from nux_eqx.data import DIGITS_LEVELS, digits


def maxpool_flow(n_blocks: int, n_channels: int) -> nux.Sequential:
    """(c): a flow that pools 8x8 images to 4x4 with `MaxPool` halfway."""
    return nux.Sequential(
        nux.UniformDequantization(scale=DIGITS_LEVELS),
        nux.Logit(0.05),
        nux.Squeeze(),  # (4, 4, 4)
        *[nux.GlowBlock(n_channels) for _ in range(n_blocks)],
        nux.UnSqueeze(),  # (8, 8, 1)
        nux.MaxPool(n_channels=n_channels),  # (4, 4, 1)
        nux.Squeeze(),  # (2, 2, 4)
        *[nux.GlowBlock(n_channels) for _ in range(n_blocks)],
        nux.UnitGaussianPrior(),
    )


def models(n_blocks: int, n_channels: int) -> dict:
    return {
        "(a) Glow": nux.MultiscaleGlow(2, n_blocks, n_channels, dequantize=DIGITS_LEVELS),
        "(b) Glow, factor_out='chain_rule'": nux.MultiscaleGlow(
            2, n_blocks, n_channels, factor_out="chain_rule", dequantize=DIGITS_LEVELS
        ),
        "(c) Glow + MaxPool": maxpool_flow(n_blocks, n_channels),
    }


def train(flow, x_train, x_valid, x_test, *, seconds, steps, batch_size, lr, eval_every, seed):
    """Train `flow` with `nux_eqx.train.fit` for `seconds` of wall time (compilation
    included) or `steps` steps; return the test bits/dim of the best validation flow."""
    k_fit, k_test = jax.random.split(jax.random.key(seed))
    flow, history = nux.train.fit(
        flow,
        x_train,
        key=k_fit,
        steps=steps,
        max_seconds=None if steps is not None else seconds,
        batch_size=batch_size,
        optimizer=optax.adam(lr),
        clip_norm=5.0,
        valid=x_valid,
        eval_every=eval_every,
        init_batches=8,
        progress=False,
    )
    per_bit = history["bits_per_dim_factor"]  # 1 / (64 ln 2): nats per example -> bits/dim
    test = float(nux.train.nll(flow, jnp.asarray(x_test), key=k_test)) * per_bit
    n_params = sum(p.size for p in jax.tree.leaves(nux.trainable(flow)[0]))
    return dict(
        test=test,
        valid=history["best_valid_loss"] * per_bit,
        best_step=history["best_step"],
        steps=history["steps"],
        wall=history["wall_time"],
        n_params=n_params,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=90.0, help="training wall time per model (default 90)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps instead")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-blocks", type=int, default=4)
    p.add_argument("--n-channels", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=100, help="validate every N steps; keep the best")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    data = digits(seed=0)
    perm = np.random.default_rng(1).permutation(len(data.train))
    n_valid = len(perm) // 10
    x_valid, x_train, x_test = data.train[perm[:n_valid]], data.train[perm[n_valid:]], data.test
    budget = f"{args.steps} steps" if args.steps is not None else f"{args.seconds:.0f} s"
    print(
        f"{len(x_train)} train / {len(x_valid)} valid / {len(x_test)} test digits; "
        f"{budget} of training per model"
    )
    results = {}
    for name, flow in models(args.n_blocks, args.n_channels).items():
        r = train(
            flow,
            x_train,
            x_valid,
            x_test,
            seconds=args.seconds,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            eval_every=args.eval_every,
            seed=args.seed,
        )
        results[name] = r
        print(
            f"  {name}: {r['steps']} steps in {r['wall']:.0f} s, best valid {r['valid']:.3f} "
            f"at step {r['best_step']}, test {r['test']:.3f} bits/dim"
        )
    w = max(len(k) for k in results)
    print(f"\n{'model':<{w}}  parameters  steps  test bits/dim")
    for name, r in results.items():
        print(f"{name:<{w}}  {r['n_params']:>10}  {r['steps']:>5}  {r['test']:>13.3f}")
    return results


if __name__ == "__main__":
    main()
