"""Writes tests/data/coupling_ar_v1.eqx and its expected log-densities, with the coupling
and autoregressive classes as they were BEFORE issue 17 (one class per variant). Kept to
document how the fixture was made; tests/test_serialise.py loads it with today's code."""

import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import nux_eqx as nux

HERE = pathlib.Path(__file__).parent
H = dict(hidden_layer_sizes=(8,))


def flows():
    vec = nux.Sequential(
        nux.Coupling(**H),
        nux.Reverse(),
        nux.Coupling(kind="additive", **H),
        nux.NeuralSpline(K=3, **H),
        nux.MAF(**H),
        nux.MaskedAutoregressiveSpline(K=3, ordering="random", **H),
        nux.RationalQuadraticSpline(K=3),
        nux.UnitGaussianPrior(),
    )
    cond = nux.Sequential(
        nux.ConditionedCoupling(**H),
        nux.ConditionalMAF(ordering="reversed", **H),
        nux.ConditionalMaskedAutoregressiveSpline(K=3, **H),
        nux.UnitGaussianPrior(),
    )
    img = nux.Sequential(
        nux.Coupling(n_channels=4),
        nux.Coupling(n_channels=4, mask="checkerboard", parity=1),
        nux.NeuralSpline(K=3, n_channels=4),
        nux.ConditionedCoupling(n_channels=4, mask="checkerboard"),
        nux.UnitGaussianPrior(),
    )
    return vec, cond, img


def data():
    k = jr.split(jr.key(0), 4)
    return (
        jr.normal(k[0], (8, 4)),
        jr.normal(k[1], (8, 4)),
        jr.normal(k[2], (8, 3)),
        jr.normal(k[3], (8, 4, 4, 2)),
    )


def scrambled(flow, key):
    leaves, tree = jax.tree.flatten(flow)
    keys = jr.split(key, len(leaves))
    new = [
        v + 0.1 * jr.normal(kk, v.shape, v.dtype)
        if isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jnp.floating)
        else v
        for v, kk in zip(leaves, keys)
    ]
    return jax.tree.unflatten(tree, new)


def initialised():
    vec, cond, img = flows()
    xv, xc, c, xi = data()
    vec = scrambled(nux.init(vec, xv, key=jr.key(1)), jr.key(11))
    cond = scrambled(nux.init(cond, xc, key=jr.key(2), cond=c), jr.key(12))
    img = scrambled(nux.init(img, xi, key=jr.key(3), cond=c), jr.key(13))
    return vec, cond, img


def log_probs(vec, cond, img):
    xv, xc, c, xi = data()
    lp = eqx.filter_jit(jax.vmap(nux.log_prob, in_axes=(None, 0)))
    lpc = eqx.filter_jit(jax.vmap(lambda f, x, cc: nux.log_prob(f, x, cond=cc), in_axes=(None, 0, 0)))
    return lp(vec, xv), lpc(cond, xc, c), lpc(img, xi, c)


if __name__ == "__main__":
    vec, cond, img = initialised()
    for name, f in (("vec", vec), ("cond", cond), ("img", img)):
        nux.save(HERE / f"coupling_ar_v1_{name}.eqx", f)
    out = {n: [float(v) for v in a] for n, a in zip(("vec", "cond", "img"), log_probs(vec, cond, img))}
    (HERE / "coupling_ar_v1.json").write_text(json.dumps(out, indent=1))
