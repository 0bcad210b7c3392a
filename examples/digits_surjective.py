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
sample per digit). Training: Adam, gradient clipping, batch 64, a 90/10 split of the
training digits to keep the best checkpoint; the test split is the seeded 80/20 one of
`nux_eqx.data.digits()`.
"""

import argparse
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import nux_eqx as nux
from nux_eqx.data import DIGITS_LEVELS, digits


def bits_per_dim(log_px: float, shape=(8, 8, 1)) -> float:
    return -log_px / (math.prod(shape) * math.log(2))


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
    """Train `flow` for `seconds` of wall time (or `steps` steps); return a dict of
    results with the test bits/dim of the best validation checkpoint."""
    key = jax.random.key(seed)
    k_init, k_train, k_test = jax.random.split(key, 3)
    rng = np.random.default_rng(seed)
    init_batch = x_train[rng.choice(len(x_train), 512, replace=False)]
    flow = nux.init(flow, init_batch, key=k_init)
    params, static = nux.trainable(flow)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    optimizer = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(lr))
    opt_state = optimizer.init(params)

    def loss_fn(params, x, key):
        f = eqx.combine(params, static)
        keys = jax.random.split(key, x.shape[0])
        return -jnp.mean(jax.vmap(lambda xi, ki: nux.log_prob(f, xi, key=ki))(x, keys))

    @eqx.filter_jit(donate="all")
    def train_step(params, opt_state, x, key):
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, sub)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, loss

    @eqx.filter_jit
    def mean_log_px(params, x, key):
        return -loss_fn(params, x, key)

    def batches():  # shuffled epochs, last partial batch dropped
        while True:
            perm = rng.permutation(len(x_train))
            for i in range(0, len(perm) - batch_size + 1, batch_size):
                yield jnp.asarray(x_train[perm[i : i + batch_size]])

    stream = batches()
    x_valid_j, k_valid = jnp.asarray(x_valid), jax.random.fold_in(k_test, 1)
    best = (math.inf, 0, params)
    t0 = time.perf_counter()
    n = 0
    while True:
        if steps is not None and n >= steps:
            break
        if steps is None and n % 25 == 0 and n > 0 and time.perf_counter() - t0 >= seconds:
            break
        params, opt_state, k_train, loss = train_step(params, opt_state, next(stream), k_train)
        n += 1
        if n % eval_every == 0:
            valid = bits_per_dim(float(mean_log_px(params, x_valid_j, k_valid)))
            if valid < best[0]:
                best = (valid, n, jax.tree.map(jnp.copy, params))
    wall = time.perf_counter() - t0
    valid = bits_per_dim(float(mean_log_px(params, x_valid_j, k_valid)))
    if valid < best[0]:
        best = (valid, n, params)
    test = bits_per_dim(float(mean_log_px(best[2], jnp.asarray(x_test), k_test)))
    return dict(test=test, valid=best[0], best_step=best[1], steps=n, wall=wall, n_params=n_params)


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
