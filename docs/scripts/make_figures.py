"""Make the figures of the documentation (docs/figures/*.png).

    python docs/scripts/make_figures.py            # everything (a few minutes on a CPU)
    python docs/scripts/make_figures.py --only toys

- `toy_densities.png`: a neural spline flow trained on `moons` and `8gaussians` of
  `nux_eqx.data.toy` (FFJORD's toys: moons with noise 0.1, scaled by 2; data, learned
  density, samples), with the test NLL (8gaussians' exact NLL is 2.83);
- `glow_digits_samples.png`: samples of a multiscale Glow trained on the 8x8 digits, at
  two temperatures, next to test digits;
- `glow_digits_loss.png`: the Glow's training and validation loss in bits/dim.

The tutorials train the same models for far fewer steps; these are the longer runs.
"""

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import nux_eqx as nux  # noqa: E402
from nux_eqx.data import DIGITS_LEVELS, digits, toy  # noqa: E402

FIGURES = pathlib.Path(__file__).parents[1] / "figures"


def toys(steps: int) -> None:
    names = ["moons", "8gaussians"]
    fig, axes = plt.subplots(len(names), 3, figsize=(9, 3 * len(names)))
    lim = {"moons": 2.5, "8gaussians": 4.0}
    for row, name in zip(axes, names):
        t0 = time.perf_counter()
        data = toy(name, n_train=20_000, n_valid=2_000, n_test=2_000)
        flow, _ = nux.train.fit(
            nux.NeuralSplineFlow(n_layers=8, hidden_layer_sizes=(64, 64), K=8, B=4.0),
            data.train,
            key=jax.random.key(0),
            steps=steps,
            batch_size=256,
            optimizer=optax.adam(optax.cosine_decay_schedule(3e-3, steps)),
            progress=False,
        )
        test_nll = float(nux.train.nll(flow, jnp.asarray(data.test)))
        print(f"{name}: test NLL {test_nll:.3f} nats ({time.perf_counter() - t0:.0f} s)")
        a = lim[name]
        g = jnp.linspace(-a, a, 200)
        grid = jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 2)
        density = jnp.exp(jax.vmap(lambda v, f=flow: nux.log_prob(f, v))(grid)).reshape(200, 200)
        samples, _ = jax.vmap(lambda k, f=flow: nux.sample(f, k))(jax.random.split(jax.random.key(1), 5000))
        row[0].scatter(*data.test[:5000].T, s=0.5, c="k")
        row[1].imshow(density, origin="lower", extent=(-a, a, -a, a), cmap="viridis")
        row[2].scatter(*np.asarray(samples).T, s=0.5, c="C0")
        titles = ["data (nux_eqx.data.toy)", f"spline flow density (test NLL {test_nll:.2f})", "spline flow samples"]
        for ax, title in zip(row, titles):
            ax.set(xlim=(-a, a), ylim=(-a, a), aspect="equal", xticks=[], yticks=[], title=title)
        row[0].set_ylabel(name)
    fig.tight_layout()
    fig.savefig(FIGURES / "toy_densities.png", dpi=80)
    plt.close(fig)


def glow(steps: int) -> None:
    t0 = time.perf_counter()
    data = digits(seed=0, fractions=(0.7, 0.1, 0.2))
    flow, history = nux.train.fit(
        nux.MultiscaleGlow(n_levels=2, n_blocks=4, n_channels=32, dequantize=DIGITS_LEVELS),
        data,  # its `valid` split picks the best flow
        key=jax.random.key(0),
        steps=steps,
        batch_size=64,
        optimizer=optax.adam(1e-3),
        clip_norm=5.0,
        eval_every=100,
        progress=False,
    )
    test_nll = float(nux.train.nll(flow, jnp.asarray(data.test), key=jax.random.key(2)))
    test_bpd = nux.train.bits_per_dim(test_nll, (8, 8, 1))
    print(f"glow: {history['steps']} steps, test {test_bpd:.3f} bits/dim ({time.perf_counter() - t0:.0f} s)")

    # samples: 8 x 8 per temperature, next to test digits
    n = 64
    panels = [("test digits", np.asarray(data.test[:n]))]
    for t in (1.0, 0.7):
        keys = jax.random.split(jax.random.key(3), n)
        x, _ = jax.vmap(lambda k, t=t: nux.sample(flow, k, temperature=t))(keys)
        panels.append((f"samples, temperature {t}", np.asarray(x)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
    for ax, (title, imgs) in zip(axes, panels):
        imgs = np.pad(
            np.clip(imgs[..., 0], 0, DIGITS_LEVELS - 1), ((0, 0), (1, 1), (1, 1)), constant_values=4
        )
        tile = imgs.reshape(8, 8, 10, 10).transpose(0, 2, 1, 3).reshape(80, 80)
        ax.imshow(tile, cmap="gray_r", vmin=0, vmax=DIGITS_LEVELS - 1, interpolation="nearest")
        ax.set(xticks=[], yticks=[], title=title)
    fig.suptitle(f"Multiscale Glow on 8x8 digits, {history['steps']} steps: test {test_bpd:.2f} bits/dim")
    fig.tight_layout()
    fig.savefig(FIGURES / "glow_digits_samples.png", dpi=80)
    plt.close(fig)

    # loss curve in bits/dim
    f = history["bits_per_dim_factor"]
    train = np.asarray(history["train_loss"]) * f
    w = 25
    smooth = np.convolve(train, np.ones(w) / w, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(len(train)) + 1, train, alpha=0.25, c="C0", lw=0.8)
    ax.plot(np.arange(w, len(train) + 1), smooth, c="C0", label="train (moving average)")
    ax.plot(history["valid_step"], np.asarray(history["valid_loss"]) * f, "o-", c="C1", label="validation")
    ax.axhline(2.96, c="gray", ls="--", lw=1, label="full-covariance Gaussian")
    ax.set(xlabel="step", ylabel="bits/dim", ylim=(1.0, 4.5), title="Multiscale Glow on digits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(FIGURES / "glow_digits_loss.png", dpi=80)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["toys", "glow"], default=None)
    p.add_argument("--toy-steps", type=int, default=2000)
    p.add_argument("--glow-steps", type=int, default=1500)
    args = p.parse_args(argv)
    FIGURES.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    if args.only in (None, "toys"):
        toys(args.toy_steps)
    if args.only in (None, "glow"):
        glow(args.glow_steps)
    print(f"done in {time.perf_counter() - t0:.0f} s; figures in {FIGURES}")


if __name__ == "__main__":
    main()
