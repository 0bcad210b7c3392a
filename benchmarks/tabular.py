"""nux_eqx vs flowjax / zuko / distrax on pzflow's galaxy table (7-D), side by side.

    bash benchmarks/install_peers.sh                 # once: peers in /work/bench-venv
    /work/bench-venv/bin/python benchmarks/tabular.py --quick     # ~2 min: 300 steps
    /work/bench-venv/bin/python benchmarks/tabular.py             # full: 3000 steps, seed 0
    /work/bench-venv/bin/python benchmarks/tabular.py --seeds 0 1 2 --jobs nux:affine flowjax:affine

Models (MLPs 2 x 128, ReLU, each library's default initialisation, base N(0, I)):

- `affine`: 8 affine couplings, 4 of 7 features transformed from the other 3.
  nux_eqx `RealNVP(8, (128, 128), actnorm=False)` (log-scale = tanh, `Roll()` between the
  couplings: a cyclic shift by 4); flowjax `coupling_flow(flow_layers=8)` (softplus + 0.01
  scale, a random permutation after each coupling); zuko `RealNVP(7, transforms=8, randmask=True)`; distrax 8
  `MaskedCoupling`s with seeded random masks and `eqx.nn.MLP(7 -> 14)` conditioners.
- `nsf`: 8 rational-quadratic spline couplings, K = 8 bins on [-4, 4], identity tails.
  nux_eqx `NeuralSplineFlow(8, K=8, B=4, actnorm=False)` (a random permutation per
  layer; `results/tabular_roll_3seeds.json` was run with `permutation="roll"`); flowjax
  `coupling_flow(transformer=RationalQuadraticSpline(knots=7, interval=4))`; zuko
  8 `GeneralCouplingTransform(MonotonicRQSTransform(bound=4))`; distrax
  `MaskedCoupling(RationalQuadraticSpline(range 4, identity boundary slopes))`.
- `maf`: 5 MADE layers (2 x 128). nux_eqx `MaskedAutoregressiveFlow(5, actnorm=False)`
  (`z = (x - shift) * (softplus(u) + 0.01)`, the `"inverse_softplus"` scale; the first
  layer in the data's order, the others in seeded random orders);
  flowjax `masked_autoregressive_flow(flow_layers=5)`; zuko `MAF(7, transforms=5,
  randperm=True)`. distrax has no MAF.
- `bnaf` (opt-in): 3 block neural autoregressive layers (2 hidden layers, block_dim 16:
  hidden width 112), a fixed random permutation between them, leaky-tanh activation.
  nux_eqx `BlockAutoregressiveNetwork(2, 16)` with `Permute(seed)`; flowjax
  `block_neural_autoregressive_flow(flow_layers=3, nn_depth=2, nn_block_dim=16)`
  (inverted, so the density is one network pass, as in nux_eqx).
- `naf` (opt-in): 5 MADE layers (2 x 128) with the deep sigmoidal transformer (NAF-DSF,
  K = 8 units): nux_eqx `MaskedAutoregressive(DeepSigmoidal(8), ordering="random")`.
  No peer here has DSF (zuko's NAF is UNAF).
- `floor:*`: the conditioner networks alone, no flow: the same number of MLPs with the
  nux_eqx shapes (affine 4 -> 6, nsf 4 -> 69, maf 7 -> 14), each on the batch, summed
  squared outputs as a dummy loss, the same Adam step. The work no flow can avoid.

Protocol (the peer benchmark's, `shared/reference/peer-figures.md`): split 80/10/10 by
`default_rng(0)`, standardised; Adam 1e-3, batch 512, batch order from
`default_rng(1 + seed)`; `first step s` = trace + compile + run (torch: one eager step);
`step ms` = median of 50 steps (each synchronised) after 10 warm-up steps; the other steps
run asynchronously and `train s` is their total wall time (evaluations excluded);
validation NLL every `eval_every` steps and the test NLL at the best validation checkpoint;
log_prob and sampling throughput on 10 000 points (median of 11 after a warm-up call);
peak RSS of the worker. Results go to `benchmarks/results/tabular[_quick].json`.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

MODELS = ("affine", "nsf", "maf")
NAF_MODELS = ("bnaf", "naf")  # neural autoregressive flows: opt-in (--models / --jobs)
LIBS = {  # library -> (module needed, models it builds)
    "nux": ("nux_eqx", MODELS + NAF_MODELS),
    "flowjax": ("flowjax", (*MODELS, "bnaf")),
    "distrax": ("distrax", ("affine", "nsf")),
    "zuko": ("zuko", MODELS),
    "floor": ("equinox", MODELS),
}
DIM = 7
N_EVAL = 10_000


# ------------------------------------------------------------------------------------------
# JAX harness (nux_eqx, flowjax, distrax, floor)
# ------------------------------------------------------------------------------------------


def _jax_setup():
    import jax

    jax.config.update("jax_enable_x64", False)
    return jax


def jax_train(cfg, data, step, state, *, eval_nll=None, log_prob=None, sample=None, n_params=0):
    """Run the protocol on a JAX step `state, loss = step(state, x)`.

    `eval_nll(state, x) -> mean NLL`, `log_prob(state, x) -> (n,)`, `sample(state, key, n)`
    are jitted by the caller; `state` is copied when a checkpoint is kept."""
    import jax
    import jax.numpy as jnp

    x_train = data["train"]
    batches = C.epoch_batches(len(x_train), cfg["batch_size"], 1 + cfg["seed"])
    block = jax.block_until_ready
    steps, every = cfg["steps"], cfg["eval_every"]
    res = {"params": n_params}
    valid_j, test_j = jnp.asarray(data["valid"]), jnp.asarray(data["test"])

    t0 = time.perf_counter()
    state, loss = step(state, jnp.asarray(x_train[next(batches)]))
    block(loss)
    res["first_step_s"] = time.perf_counter() - t0
    train_s = res["first_step_s"]
    times, history = [], []
    best = (math.inf, 0, None)
    i = 1
    t_seg = time.perf_counter()
    while i < steps:
        if 11 <= i < 61:
            t = time.perf_counter()
            state, loss = step(state, jnp.asarray(x_train[next(batches)]))
            block(loss)
            times.append(time.perf_counter() - t)
        else:
            state, loss = step(state, jnp.asarray(x_train[next(batches)]))
            if i < 11:
                block(loss)
        i += 1
        if eval_nll is not None and (i % every == 0 or i == steps):
            block(loss)
            train_s += time.perf_counter() - t_seg
            v = float(eval_nll(state, valid_j))
            history.append((i, v, float(loss)))
            if v < best[0]:
                best = (v, i, jax.tree.map(jnp.copy, state))
            t_seg = time.perf_counter()
    block(loss)
    train_s += time.perf_counter() - t_seg
    res["step_ms"] = 1e3 * statistics.median(times) if times else None
    res["steps"] = steps
    res["train_s"] = train_s
    res["final_loss"] = float(loss)
    if eval_nll is not None:
        res["history"] = history
        res["test_nll_final"] = float(eval_nll(state, test_j))
        res["best_valid_nll"], res["best_step"] = best[0], best[1]
        res["test_nll_best"] = float(eval_nll(best[2], test_j)) if best[2] is not None else None
    x10k = test_j[:N_EVAL]
    if log_prob is not None:
        res["log_prob_pts_s"] = N_EVAL / C.median_call_s(lambda: log_prob(state, x10k), block)
    if sample is not None:
        key = jax.random.key(7)
        n_s = cfg.get("n_sample", N_EVAL)  # fewer for the numerically inverted NAF flows
        try:  # a numerical inverse may refuse (flowjax's BNAF search raises at max_steps)
            res["samples_s"] = n_s / C.median_call_s(lambda: sample(state, key, n_s), block)
        except Exception as e:  # noqa: BLE001 - recorded in the results, the run goes on
            res["samples_s"], res["samples_error"] = None, f"{type(e).__name__}: {str(e)[:300]}"
    return res


def _count(tree):
    import equinox as eqx
    import jax

    return int(sum(a.size for a in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))))


def plain_adam_step(loss_fn, static, lr=1e-3, donate=True):
    """A user's plain optax loop: `((params, opt), x) -> ((params, opt), loss)`."""
    import equinox as eqx
    import jax
    import optax

    opt = optax.adam(lr)

    def step(state, x):
        params, opt_state = state
        value, grads = jax.value_and_grad(loss_fn)(params, static, x)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return opt, eqx.filter_jit(step, donate="all" if donate else "none")


# --- nux_eqx ------------------------------------------------------------------------------


def job_nux(model, cfg):
    jax = _jax_setup()
    import equinox as eqx
    import jax.numpy as jnp
    import optax

    import nux_eqx as nux

    data = dict(np.load(cfg["data"]))
    scale, zero = cfg.get("nux_scale"), cfg.get("nux_zero_init")
    if model == "affine" and (scale is not None or zero is not None):  # RealNVP with other settings
        layers = []
        for i in range(8):
            layers += [nux.ActNorm()] if cfg["actnorm"] else []
            net = nux.nn.DefaultNetwork((128, 128), None, zero_init=zero)
            layers += [
                nux.Coupling(nux.ElementwiseAffine(scale or "tanh"), network_factory=net),
                nux.Permute(seed=i),
            ]
        flow = nux.Sequential(*layers, nux.UnitGaussianPrior())
    elif model == "affine":
        flow = nux.RealNVP(8, (128, 128), actnorm=cfg["actnorm"])
    elif model == "bnaf":
        layers = []
        for i in range(3):
            layers += [nux.BlockAutoregressiveNetwork(2, 16), nux.Permute(seed=cfg["seed"] * 10 + i)]
        flow = nux.Sequential(*layers[:-1], nux.UnitGaussianPrior())
    elif model == "naf":
        layers = []
        for i in range(5):
            layers += [nux.ActNorm()] if cfg["actnorm"] else []
            layers += [nux.MaskedAutoregressive(nux.DeepSigmoidal(8), (128, 128), "random", seed=i)]
        flow = nux.Sequential(*layers, nux.UnitGaussianPrior())
    elif model == "nsf" and zero is not None:  # the spline coupling's network at random / zero start
        layers = []
        for i in range(8):
            layers += [nux.ActNorm()] if cfg["actnorm"] else []
            net = nux.nn.DefaultNetwork((128, 128), None, zero_init=zero)
            layers += [nux.NeuralSpline(8, 4.0, network_factory=net), nux.Permute(seed=i)]
        flow = nux.Sequential(*layers, nux.UnitGaussianPrior())
    elif model == "nsf":
        flow = nux.NeuralSplineFlow(8, (128, 128), K=8, B=4.0, actnorm=cfg["actnorm"])
    elif model == "maf" and (scale is not None or zero is not None):
        import nux_eqx.nn._made as made_module

        if zero is not None:  # MADE's output layer at zero (the default) or random
            made_module.MADE.__init__.__kwdefaults__["zero_init"] = zero
        layers = []
        for i in range(5):
            layers += [nux.ActNorm()] if cfg["actnorm"] else []
            t = nux.ElementwiseAffine(scale or "tanh")
            layers += [nux.MaskedAutoregressive(t, (128, 128), "random", seed=i)]
        flow = nux.Sequential(*layers, nux.UnitGaussianPrior())
    else:
        flow = nux.MaskedAutoregressiveFlow(5, (128, 128), actnorm=cfg["actnorm"])
    if cfg.get("base") == "learned":  # FlowJAX's learned Normal base: an affine map before the prior
        flow = nux.Sequential(*flow.layers[:-1], nux.ElementwiseAffine("softplus"), flow.layers[-1])
    key = jax.random.key(cfg["seed"])
    init_x = data["train"][np.random.default_rng(cfg["seed"]).choice(len(data["train"]), 512, replace=False)]
    flow = nux.init(flow, jnp.asarray(init_x), key=key)
    n_params = int(sum(a.size for a in jax.tree.leaves(nux.trainable(flow)[0])))

    plain = cfg.get("nux_step", "make_step") == "plain"
    params, static = nux.trainable(flow)
    if not plain:  # the library's own training step
        tstep = nux.train.make_step(optax.adam(1e-3))
        state0 = (flow, tstep.init(flow))

        def step(state, x):
            f, o, loss = tstep(state[0], state[1], x)
            return (f, o), loss

    else:  # a plain optax loop on the same flow, for profiling make_step's extras

        def loss_fn(p, s, x):
            return nux.train.nll(eqx.combine(p, s), x)

        opt, step = plain_adam_step(loss_fn, static)
        state0 = (params, opt.init(params))

    def flow_of(state):
        return eqx.combine(state[0], static) if plain else state[0]

    eval_nll = jax.jit(lambda s, x: nux.train.nll(flow_of(s), x))
    log_prob = jax.jit(lambda s, x: nux.train.batch_log_prob(flow_of(s), x))
    sample = jax.jit(
        lambda s, k, n: jax.vmap(lambda kk: nux.sample(flow_of(s), kk)[0])(jax.random.split(k, n)),
        static_argnums=2,
    )
    return jax_train(
        cfg, data, step, state0, eval_nll=eval_nll, log_prob=log_prob, sample=sample, n_params=n_params
    )


# --- flowjax ------------------------------------------------------------------------------


def job_flowjax(model, cfg):
    jax = _jax_setup()
    import equinox as eqx
    import jax.numpy as jnp
    import paramax
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import block_neural_autoregressive_flow, coupling_flow, masked_autoregressive_flow

    data = dict(np.load(cfg["data"]))
    key = jax.random.key(cfg["seed"])
    base = Normal(jnp.zeros(DIM))
    if model == "affine":
        dist = coupling_flow(key, base_dist=base, flow_layers=8, nn_width=128, nn_depth=2)
    elif model == "nsf":
        dist = coupling_flow(
            key,
            base_dist=base,
            transformer=RationalQuadraticSpline(knots=7, interval=4),
            flow_layers=8,
            nn_width=128,
            nn_depth=2,
        )
    elif model == "bnaf":
        dist = block_neural_autoregressive_flow(
            key, base_dist=base, flow_layers=3, nn_depth=2, nn_block_dim=16, invert=True
        )
    else:
        dist = masked_autoregressive_flow(key, base_dist=base, flow_layers=5, nn_width=128, nn_depth=2)
    if cfg.get("base") == "fixed":
        dist = eqx.tree_at(lambda d: d.base_dist, dist, paramax.non_trainable(dist.base_dist))
    params, static = eqx.partition(
        dist, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable)
    )

    def loss_fn(p, s, x):
        return -jnp.mean(paramax.unwrap(eqx.combine(p, s)).log_prob(x))

    opt, step = plain_adam_step(loss_fn, static)
    n_params = _count(params)  # trainable only: a base frozen by --base fixed is not counted
    d = lambda s: paramax.unwrap(eqx.combine(s[0], static))
    eval_nll = jax.jit(lambda s, x: -jnp.mean(d(s).log_prob(x)))
    log_prob = jax.jit(lambda s, x: d(s).log_prob(x))
    sample = jax.jit(lambda s, k, n: d(s).sample(k, (n,)), static_argnums=2)
    return jax_train(
        cfg,
        data,
        step,
        (params, opt.init(params)),
        eval_nll=eval_nll,
        log_prob=log_prob,
        sample=sample,
        n_params=n_params,
    )


# --- distrax (Equinox MLP conditioners, as in the peer benchmark) -------------------------


def job_distrax(model, cfg):
    jax = _jax_setup()
    import distrax
    import equinox as eqx
    import jax.numpy as jnp

    data = dict(np.load(cfg["data"]))
    key = jax.random.key(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    n_layers, K = 8, 8
    out = 2 * DIM if model == "affine" else DIM * (3 * K + 1)
    keys = jax.random.split(key, n_layers)
    nets = [eqx.nn.MLP(DIM, out, 128, 2, activation=jax.nn.relu, key=k) for k in keys]
    masks = []
    for _ in range(n_layers):
        m = np.zeros(DIM, bool)
        m[rng.permutation(DIM)[:3]] = True  # 3 fixed, 4 transformed
        masks.append(m)

    def build(nets):
        layers = []
        for net, m in zip(nets, masks):
            cond = lambda x, net=net: jax.vmap(net)(x) if x.ndim == 2 else net(x)
            if model == "affine":

                def conditioner(x, cond=cond):
                    return cond(x)

                def bij(p):
                    shift, raw = p[..., :DIM], p[..., DIM:]
                    c = math.log(math.e - 1) - 0.0  # softplus(c) + 0.01 ~ 1 at raw 0
                    scale = jax.nn.softplus(raw + c) + 0.01
                    return distrax.ScalarAffine(shift=shift, scale=scale)

            else:

                def conditioner(x, cond=cond):
                    p = cond(x)
                    return p.reshape(*p.shape[:-1], DIM, 3 * K + 1)

                def bij(p):
                    return distrax.RationalQuadraticSpline(
                        p, range_min=-4.0, range_max=4.0, boundary_slopes="identity"
                    )

            layers.append(distrax.MaskedCoupling(mask=jnp.asarray(m), conditioner=conditioner, bijector=bij))
        flow = distrax.Inverse(distrax.Chain(layers))
        base = distrax.MultivariateNormalDiag(jnp.zeros(DIM), jnp.ones(DIM))
        return distrax.Transformed(base, flow)

    params, static = eqx.partition(nets, eqx.is_inexact_array)

    def loss_fn(p, s, x):
        return -jnp.mean(build(eqx.combine(p, s)).log_prob(x))

    opt, step = plain_adam_step(loss_fn, static)
    d = lambda s: build(eqx.combine(s[0], static))
    eval_nll = jax.jit(lambda s, x: -jnp.mean(d(s).log_prob(x)))
    log_prob = jax.jit(lambda s, x: d(s).log_prob(x))
    sample = jax.jit(lambda s, k, n: d(s).sample(seed=k, sample_shape=(n,)), static_argnums=2)
    return jax_train(
        cfg,
        data,
        step,
        (params, opt.init(params)),
        eval_nll=eval_nll,
        log_prob=log_prob,
        sample=sample,
        n_params=_count(nets),
    )


# --- floor: the conditioner networks alone ------------------------------------------------


FLOOR_SHAPES = {"affine": (8, 4, 6), "nsf": (8, 4, 69), "maf": (5, 7, 14)}  # (nets, in, out)


def job_floor(model, cfg):
    jax = _jax_setup()
    import equinox as eqx
    import jax.numpy as jnp

    data = dict(np.load(cfg["data"]))
    n, d_in, d_out = FLOOR_SHAPES[model]
    keys = jax.random.split(jax.random.key(cfg["seed"]), n)
    nets = [eqx.nn.MLP(d_in, d_out, 128, 2, activation=jax.nn.relu, key=k) for k in keys]
    params, static = eqx.partition(nets, eqx.is_inexact_array)

    def loss_fn(p, s, x):
        total = 0.0
        for net in eqx.combine(p, s):
            y = jax.vmap(net)(x[:, :d_in])
            total = total + jnp.mean(jnp.sum(y**2, axis=-1))
        return total

    opt, step = plain_adam_step(loss_fn, static)
    return jax_train(cfg, data, step, (params, opt.init(params)), n_params=_count(nets))


# ------------------------------------------------------------------------------------------
# torch harness (zuko)
# ------------------------------------------------------------------------------------------


def job_zuko(model, cfg):
    import torch
    import zuko

    torch.set_num_threads(cfg.get("torch_threads", 2))
    torch.manual_seed(cfg["seed"])
    data = {k: torch.from_numpy(v) for k, v in np.load(cfg["data"]).items()}
    if model == "affine":
        flow = zuko.flows.RealNVP(DIM, transforms=8, randmask=True, hidden_features=(128, 128))
    elif model == "maf":
        flow = zuko.flows.MAF(DIM, transforms=5, randperm=True, hidden_features=(128, 128))
    else:
        from zuko.distributions import DiagNormal
        from zuko.flows import Flow, GeneralCouplingTransform, UnconditionalDistribution
        from zuko.transforms import MonotonicRQSTransform

        transforms = []
        for i in range(8):  # random masks, alternately 3 and 4 transformed features
            mask = torch.randperm(DIM) % 2 == i % 2
            transforms.append(
                GeneralCouplingTransform(
                    features=DIM,
                    mask=mask,
                    univariate=lambda *p: MonotonicRQSTransform(*p, bound=4.0),
                    shapes=[(8,), (8,), (7,)],
                    hidden_features=(128, 128),
                )
            )
        base = UnconditionalDistribution(DiagNormal, torch.zeros(DIM), torch.ones(DIM), buffer=True)
        flow = Flow(transforms, base)
    n_params = sum(p.numel() for p in flow.parameters())
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    x_train = data["train"]
    batches = C.epoch_batches(len(x_train), cfg["batch_size"], 1 + cfg["seed"])

    def step():
        x = x_train[torch.from_numpy(next(batches))]
        loss = -flow().log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def eval_nll(x):
        with torch.no_grad():
            return float(-flow().log_prob(x).mean())

    res = {"params": n_params}
    steps, every = cfg["steps"], cfg["eval_every"]
    t0 = time.perf_counter()
    loss = step()
    res["first_step_s"] = time.perf_counter() - t0
    train_s, times, history, best = res["first_step_s"], [], [], (math.inf, 0, None)
    i, t_seg = 1, time.perf_counter()
    import copy

    while i < steps:
        t = time.perf_counter()
        loss = step()
        if 11 <= i < 61:
            times.append(time.perf_counter() - t)
        i += 1
        if i % every == 0 or i == steps:
            train_s += time.perf_counter() - t_seg
            v = eval_nll(data["valid"])
            history.append((i, v, float(loss)))
            if v < best[0]:
                best = (v, i, copy.deepcopy(flow.state_dict()))
            t_seg = time.perf_counter()
    train_s += time.perf_counter() - t_seg
    res.update(step_ms=1e3 * statistics.median(times), steps=steps, train_s=train_s, final_loss=float(loss))
    res["history"] = history
    res["test_nll_final"] = eval_nll(data["test"])
    flow.load_state_dict(best[2])
    res["best_valid_nll"], res["best_step"] = best[0], best[1]
    res["test_nll_best"] = eval_nll(data["test"])
    x10k = data["test"][:N_EVAL]

    def med(fn):
        with torch.no_grad():
            fn()
            ts = []
            for _ in range(3):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    res["log_prob_pts_s"] = N_EVAL / med(lambda: flow().log_prob(x10k))
    res["samples_s"] = N_EVAL / med(lambda: flow().sample((N_EVAL,)))
    return res


# ------------------------------------------------------------------------------------------
# Orchestration
# ------------------------------------------------------------------------------------------


def _dispatch(job: str):
    lib, model = job.split(":")
    fn = {
        "nux": job_nux,
        "flowjax": job_flowjax,
        "distrax": job_distrax,
        "zuko": job_zuko,
        "floor": job_floor,
    }[lib]
    return lambda cfg: fn(model, cfg)


def all_jobs(models=MODELS):
    jobs = []
    for model in models:
        for lib, (_, built) in LIBS.items():
            if model in built:
                jobs.append(f"{lib}:{model}")
    return jobs


EARLY_STEPS = (250, 500, 1000)


def seed_medians(runs: list[dict]) -> dict:
    """Per job, over seeds: the median test NLL at the best validation step and at the end,
    and the median validation NLL at a few early steps (how fast each flow learns)."""
    per_job: dict[str, dict[str, list]] = {}
    for run in runs:
        for r in run["results"]:
            if "test_nll_best" not in r:
                continue
            d = per_job.setdefault(r["job"], {"seeds": [], "best": [], "final": []})
            d["seeds"].append(run["seed"])
            d["best"].append(r["test_nll_best"])
            d["final"].append(r["test_nll_final"])
            hist = {step: v for step, v, _ in r.get("history", [])}
            for step in EARLY_STEPS:
                d.setdefault(f"valid@{step}", []).append(hist.get(step, math.nan))
    return {
        job: {
            "seeds": d["seeds"],
            **{k: {"median": statistics.median(v), "values": v} for k, v in d.items() if k != "seeds"},
        }
        for job, d in per_job.items()
    }


def print_seed_medians(medians: dict) -> None:
    keys = ["best", "final", *(f"valid@{s}" for s in EARLY_STEPS)]
    print("| job | seeds | " + " | ".join(f"{k} (median)" for k in keys) + " |")
    print("|---" * (len(keys) + 2) + "|")
    for job, d in medians.items():
        print(f"| {job} | {len(d['seeds'])} | " + " | ".join(f"{d[k]['median']:.2f}" for k in keys) + " |")


def summarise(results):
    by = {r["job"]: r for r in results if "error" not in r}
    rows = []
    for r in results:
        lib, model = r["job"].split(":")
        row = dict(r)
        ref, floor, nux = by.get(f"flowjax:{model}"), by.get(f"floor:{model}"), by.get(f"nux:{model}")
        if "error" not in r:
            row["vs_flowjax_step"] = C.ratio(r.get("step_ms"), ref and ref.get("step_ms"))
            row["vs_floor_step"] = C.ratio(r.get("step_ms"), floor and floor.get("step_ms"))
            row["vs_flowjax_first"] = C.ratio(r.get("first_step_s"), ref and ref.get("first_step_s"))
        rows.append(row)
    ratios = {}
    for model in MODELS + NAF_MODELS:
        nux, ref = by.get(f"nux:{model}"), by.get(f"flowjax:{model}")
        if nux and ref:
            ratios[model] = {
                k: C.ratio(nux.get(k), ref.get(k))
                for k in ("first_step_s", "step_ms", "train_s", "log_prob_pts_s", "samples_s", "peak_rss_mb")
            }
            ratios[model]["test_nll_best_diff"] = (
                None
                if nux.get("test_nll_best") is None or ref.get("test_nll_best") is None
                else nux["test_nll_best"] - ref["test_nll_best"]
            )
    return rows, ratios


COLS = [
    ("job", "job", ""),
    ("params", "params", ""),
    ("first_step_s", "first step s", ".2f"),
    ("step_ms", "step ms", ".2f"),
    ("vs_flowjax_step", "step / flowjax", ".2f"),
    ("vs_floor_step", "step / floor", ".2f"),
    ("train_s", "train s", ".1f"),
    ("log_prob_pts_s", "log_prob pts/s", ".3g"),
    ("samples_s", "samples/s", ".3g"),
    ("peak_rss_mb", "peak RSS MB", ".0f"),
    ("test_nll_best", "test NLL @best valid", ".3f"),
    ("best_step", "best step", ""),
    ("test_nll_final", "test NLL @end", ".3f"),
    ("load_before", "load", ""),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="300 steps, seed 0 (about 2 minutes)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS + NAF_MODELS)
    p.add_argument("--jobs", nargs="+", default=None, help="e.g. nux:affine flowjax:affine")
    p.add_argument("--actnorm", action="store_true", help="nux_eqx models with their default ActNorm")
    p.add_argument("--nux-step", choices=["make_step", "plain"], default="make_step")
    p.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument(
        "--nux-scale",
        choices=["tanh", "exp", "softplus", "inverse_softplus"],
        default=None,
        help="nux:affine and nux:maf with this ElementwiseAffine scale (default: the ready model's)",
    )
    p.add_argument(
        "--nux-zero-init",
        choices=["true", "false"],
        default=None,
        help="nux:affine / maf / nsf with the conditioner's last layer zero (true) or random (false)",
    )
    p.add_argument(
        "--base",
        choices=["fixed", "learned"],
        default=None,
        help="FlowJAX's Normal base has a learned loc and scale (14 parameters on 7-D): 'fixed' "
        "freezes them (paramax.NonTrainable); 'learned' gives the nux_eqx flows a learned "
        "elementwise affine map before the prior (the same map). Default: each library's own.",
    )
    p.add_argument("--batch-size", type=int, default=512, help="examples per step (default 512)")
    p.add_argument("--tag", default=None, help="name of the results file, without .json (default tabular[_quick]); glow_digits.py and step_anatomy.py take a suffix instead")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per job (default 900)")
    p.add_argument(
        "--summarise",
        nargs="+",
        metavar="JSON",
        default=None,
        help="print the per-job medians over seeds of these results files (one table, runs pooled) and exit",
    )
    a = p.parse_args(argv)
    if a.summarise:
        runs = [run for path in a.summarise for run in json.load(open(path))["runs"]]
        print_seed_medians(seed_medians(runs))
        return

    steps = a.steps or (300 if a.quick else 3000)
    jobs = a.jobs or all_jobs(a.models)
    missing = sorted({j.split(":")[0] for j in jobs if not C.has(LIBS[j.split(":")[0]][0])})
    if missing:
        print(f"skipping (not installed here): {', '.join(missing)}; see benchmarks/install_peers.sh")
        jobs = [j for j in jobs if j.split(":")[0] not in missing]
    print(f"load average before: {C.load_average()}  ({os.cpu_count()} cpus)")
    import tempfile

    all_rows, out = [], {"steps": steps, "quick": a.quick, "runs": []}
    with tempfile.TemporaryDirectory(prefix="nux_tab_") as tmp:
        path = os.path.join(tmp, "galaxy.npz")
        np.savez(path, **C.galaxy_arrays(0))
        for seed in a.seeds:
            cfg = {
                "data": path,
                "seed": seed,
                "steps": steps,
                "eval_every": 100 if a.quick else 250,
                "batch_size": a.batch_size,
                "nux_scale": a.nux_scale,
                "nux_zero_init": None if a.nux_zero_init is None else a.nux_zero_init == "true",
                "actnorm": a.actnorm,
                "nux_step": a.nux_step,
                "base": a.base,
                "torch_threads": a.torch_threads,
                # bnaf / naf sample by bisection (d x ~60 network passes per layer): time 500.
                "n_sample": 500 if any(j.split(":")[1] in NAF_MODELS for j in jobs) else N_EVAL,
            }
            print(f"seed {seed}: {steps} steps, jobs {jobs}")
            results = C.run_workers(os.path.abspath(__file__), jobs, cfg, timeout_s=a.timeout)
            rows, ratios = summarise(results)
            out["runs"].append({"seed": seed, "config": cfg, "results": results, "nux_over_flowjax": ratios})
            all_rows += rows
            print()
            print(C.table(rows, COLS))
            print("\nnux_eqx / flowjax (same run):")
            for model, r in ratios.items():
                print(f"  {model:7s} " + "  ".join(f"{k} {C.fmt(v, '.2f')}" for k, v in r.items()))
    if len(a.seeds) > 1:
        out["median_over_seeds"] = seed_medians(out["runs"])
        print(
            "\nmedians over seeds (test NLL at the best validation step and at the end; validation NLL early on):"
        )
        print_seed_medians(out["median_over_seeds"])
    print(f"load average after: {C.load_average()}")
    name = a.tag or ("tabular_quick" if a.quick else "tabular")
    print("wrote", C.write_json(name, out))


if __name__ == "__main__":
    if "--worker" in sys.argv:
        argv = sys.argv[1:]
        job = argv[argv.index("--worker") + 1]
        C.worker_main(argv, {job: _dispatch(job)})
    else:
        main()
