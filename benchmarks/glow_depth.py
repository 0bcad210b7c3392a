"""Compile time and step time of a Glow training step as depth grows, with and without `Repeat`.

    python benchmarks/glow_depth.py            # K = 4, 8, 16, 32; unrolled vs Repeat
    python benchmarks/glow_depth.py --quick    # K = 4, 8; a few steps
    python benchmarks/glow_depth.py --unroll 1 0 --conv native dwmm   # the full study

`--unroll u` adds `Repeat(..., unroll=u)` (0: fully unrolled scan, `unroll=True`).
`--conv dwmm` swaps each coupling's `ConvNet` for the same network whose convolutions
compute their weight gradient with a patches-matmul (`jax.custom_vjp`; the forward pass and
the input gradient stay XLA convolutions). On XLA:CPU the weight-gradient convolution runs
~100x slower inside a while loop than outside it. The library's own answer (`--conv
native`, the default) is `nux_eqx.nn.loop_body`: `Repeat` traces its scanned blocks there
and `nn.Conv2d` then computes the whole convolution as an im2col matmul, which keeps
forward-mode autodiff working (a custom VJP does not).

The model is `MultiscaleGlow` on digits-sized data (8x8x1, 2 levels, width 64, batch 64,
uniform dequantisation): K Glow steps per level, either unrolled in a `Sequential`
(`repeat=False`) or scanned with `Repeat(GlowBlock(...), K)` (`repeat=True`). The training
step is loss + grad + adam (with gradient clipping), jitted with `jax.jit` over the
trainable arrays, as in `examples/train_glow_digits.py`.

- compile: the first step (trace + lower + XLA compile + run), split into
  trace+lower and XLA compile;
- step: the median of `--steps` further steps, each ended with `block_until_ready`.

Prints a table and writes `benchmarks/results/glow_depth.json`. Timings on a shared machine
are noisy: compare ratios within one run.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import nux_eqx as nux
from nux_eqx.data import DIGITS_LEVELS, digits

# --------------------------------------------------------------------------------------
# A loop-friendly convolution: XLA conv forward and input gradient, matmul weight gradient.
# --------------------------------------------------------------------------------------

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w):
    return jax.lax.conv_general_dilated(x[None], w, (1, 1), "SAME", dimension_numbers=_DN)[0]


def _patches(x, kh, kw):
    """`(h, w, kh * kw * c)`: the SAME-padded neighbourhood of every pixel (HWIO order)."""
    h, w = x.shape[:2]
    xp = jnp.pad(x, ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0)))
    return jnp.concatenate([xp[i : i + h, j : j + w] for i in range(kh) for j in range(kw)], axis=-1)


@jax.custom_vjp
def conv_dwmm(x, w):
    """`conv_general_dilated(x, w, SAME)` on one `(h, w, c)` image, with a matmul weight gradient."""
    return _conv(x, w)


def _conv_fwd(x, w):
    return _conv(x, w), (x, w)


def _conv_bwd(res, g):
    x, w = res
    kh, kw, cin, cout = w.shape
    dx = jax.vjp(lambda a: _conv(a, w), x)[1](g)[0]
    dw = jnp.einsum("hwk,hwo->ko", _patches(x, kh, kw), g).reshape(kh, kw, cin, cout)
    return dx, dw


conv_dwmm.defvjp(_conv_fwd, _conv_bwd)


class DwmmConv2d(eqx.Module):
    weight: jax.Array
    bias: jax.Array

    def __call__(self, x):
        return conv_dwmm(x, self.weight) + self.bias


class DwmmConvNet(eqx.Module):
    """`nux_eqx.nn.ConvNet` (relu) with `DwmmConv2d` convolutions."""

    convs: tuple

    def __call__(self, x):
        x = jax.nn.relu(self.convs[0](x))
        x = jax.nn.relu(self.convs[1](x))
        return self.convs[2](x)


def dwmm_factory(n_channels):
    def factory(in_shape, out_shape, *, key):
        net = nux.nn.ConvNet(in_shape[-1], out_shape[-1], n_channels, key=key)
        return DwmmConvNet(tuple(DwmmConv2d(c.weight, c.bias) for c in net.convs))

    return factory


def configure(flow, unroll, conv, n_channels):
    """Rebuild the (un-initialised) `Repeat`s with `unroll` and the couplings with `conv`."""

    def fix(m):
        if isinstance(m, nux.Repeat):
            return nux.Repeat(configure(m.block, unroll, conv, n_channels), m.n, unroll=unroll)
        if isinstance(m, nux.Coupling) and conv == "dwmm":
            return nux.Coupling(
                kind=m.kind, network_factory=dwmm_factory(n_channels), mask=m.mask, parity=m.parity
            )
        return m

    is_node = lambda m: isinstance(m, (nux.Repeat, nux.Coupling))  # noqa: E731
    return jax.tree.map(fix, flow, is_leaf=is_node)


def measure(K, repeat, unroll, conv, x_train, *, steps, batch_size, n_channels, seed=0):
    flow = nux.MultiscaleGlow(
        n_levels=2, n_blocks=K, n_channels=n_channels, dequantize=DIGITS_LEVELS, repeat=repeat
    )
    flow = configure(flow, True if unroll == 0 else unroll, conv, n_channels)
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    k_init, k_train = jax.random.split(key)
    t0 = time.perf_counter()
    flow = nux.init(flow, x_train[rng.choice(len(x_train), 256, replace=False)], key=k_init)
    jax.block_until_ready(jax.tree.leaves(eqx.filter(flow, eqx.is_array)))
    t_init = time.perf_counter() - t0
    params, static = nux.trainable(flow)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    optimizer = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(1e-3))
    opt_state = optimizer.init(params)

    def loss_fn(params, x, key):
        f = eqx.combine(params, static)
        keys = jax.random.split(key, x.shape[0])
        return -jnp.mean(jax.vmap(lambda xi, ki: nux.log_prob(f, xi, key=ki))(x, keys))

    def train_step(params, opt_state, x, key):
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, sub)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, loss

    step = jax.jit(train_step, donate_argnums=(0, 1))

    def batch():
        return jnp.asarray(x_train[rng.choice(len(x_train), batch_size, replace=False)])

    xb = batch()
    t0 = time.perf_counter()
    lowered = step.lower(params, opt_state, xb, k_train)
    t_lower = time.perf_counter() - t0
    compiled = lowered.compile()
    t_xla = time.perf_counter() - t0 - t_lower
    params, opt_state, k_train, loss = compiled(params, opt_state, xb, k_train)
    loss.block_until_ready()
    t_first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        xb = batch()
        xb.block_until_ready()
        t0 = time.perf_counter()
        params, opt_state, k_train, loss = compiled(params, opt_state, xb, k_train)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    if not np.isfinite(float(loss)):
        raise RuntimeError(f"K={K} repeat={repeat}: the loss is not finite ({float(loss)}).")
    return {
        "K": K,
        "repeat": repeat,
        "unroll": ("full" if unroll == 0 else unroll) if repeat else None,
        "conv": conv,
        "n_params": int(n_params),
        "init_s": t_init,
        "trace_lower_s": t_lower,
        "xla_compile_s": t_xla,
        "compile_s": t_first,
        "step_ms_median": 1e3 * statistics.median(times),
        "step_ms_min": 1e3 * min(times),
        "steps": steps,
        "final_loss": float(loss),
    }


def mode_name(r):
    name = f"Repeat(unroll={r['unroll']})" if r["repeat"] else "unrolled"
    return name if r["conv"] == "native" else f"{name}+dwmm"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="K = 4, 8 and 5 steps (a smoke run)")
    p.add_argument("--K", type=int, nargs="+", default=None, help="steps per level (default 4 8 16 32)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 20)")
    p.add_argument(
        "--unroll", type=int, nargs="+", default=[1], help="Repeat unroll values; 0 = full (default 1)"
    )
    p.add_argument(
        "--conv", nargs="+", default=["native"], choices=["native", "dwmm"], help="coupling convolutions"
    )
    p.add_argument("--no-unrolled", action="store_true", help="skip the repeat=False baseline")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-channels", type=int, default=64)
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "glow_depth.json"))
    args = p.parse_args(argv)
    Ks = args.K or ([4, 8] if args.quick else [4, 8, 16, 32])
    steps = args.steps or (5 if args.quick else 20)

    x_train = digits(seed=0).train
    configs = []
    for K in Ks:
        for conv in args.conv:
            if not args.no_unrolled:
                configs.append((K, False, None, conv))
            configs.extend((K, True, u, conv) for u in args.unroll)
    rows = []
    print(
        f"backend {jax.default_backend()}, {os.cpu_count()} CPUs; batch {args.batch_size}, width {args.n_channels}"
    )
    header = f"{'K':>3} {'mode':<24} {'params':>9} {'compile s':>9} {'(trace':>7} {'xla)':>6} {'step ms':>8}"
    print(header)
    for K, repeat, unroll, conv in configs:
        r = measure(
            K,
            repeat,
            unroll,
            conv,
            x_train,
            steps=steps,
            batch_size=args.batch_size,
            n_channels=args.n_channels,
        )
        rows.append(r)
        print(
            f"{K:>3} {mode_name(r):<24} {r['n_params']:>9} {r['compile_s']:>9.2f} {r['trace_lower_s']:>7.2f} "
            f"{r['xla_compile_s']:>6.2f} {r['step_ms_median']:>8.1f}",
            flush=True,
        )
    # Compile-time ratios against the smallest K of the same mode, and step-time ratios
    # against the unrolled Glow with native convolutions at the same K.
    summary = {}
    for name in dict.fromkeys(mode_name(r) for r in rows):
        sel = sorted((r for r in rows if mode_name(r) == name), key=lambda r: r["K"])
        if len(sel) > 1:
            summary[name] = {
                f"compile K={r['K']} / K={sel[0]['K']}": r["compile_s"] / sel[0]["compile_s"] for r in sel[1:]
            }
            print(f"{name:<24}", " ".join(f"{k}: {v:.2f}x" for k, v in summary[name].items()))
    for K in Ks:
        base = [r for r in rows if r["K"] == K and mode_name(r) == "unrolled"]
        for r in rows:
            if base and r["K"] == K and r is not base[0]:
                print(
                    f"K={K:<3} {mode_name(r):<24} / unrolled: compile "
                    f"{r['compile_s'] / base[0]['compile_s']:.2f}x, step {r['step_ms_median'] / base[0]['step_ms_median']:.2f}x"
                )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "equinox": eqx.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "batch_size": args.batch_size,
        "n_channels": args.n_channels,
        "quick": args.quick,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows, "compile_ratios": summary}, indent=2) + "\n")
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
