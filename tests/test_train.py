"""Training: make_step, fit (validation, early stopping, clipping, warm-up, non-finite
losses, bad data), losses and metrics, checkpoints (resume, SIGKILL, corruption)."""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import nux_eqx as nux
from nux_eqx.train import (
    batch_log_prob,
    bits_per_dim,
    fit,
    importance_weighted_nll,
    load_checkpoint,
    make_step,
    nll,
    reverse_kl,
    reverse_kl_loss,
)


def small_flow():
    return nux.Sequential(
        nux.ActNorm(),
        nux.Coupling(hidden_layer_sizes=(16,)),
        nux.Reverse(),
        nux.Coupling(hidden_layer_sizes=(16,)),
        nux.UnitGaussianPrior(),
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 2)) * np.array([2.0, 0.5]) + np.array([1.0, -1.0])
    x[:, 1] += 0.5 * x[:, 0] ** 2
    return x.astype(np.float32)


def params_of(flow):
    return nux.trainable(flow)[0]


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# ---------------------------------------------------------------------------------------
# make_step
# ---------------------------------------------------------------------------------------


def test_make_step_trains_and_scan_matches_loop(data):
    x = jnp.asarray(data[:64])
    flow = nux.init(small_flow(), x, key=jr.key(0))
    step = make_step(optax.adam(1e-2), donate=False)
    opt = step.init(flow)
    f, o = flow, opt
    losses = []
    for i in range(3):
        f, o, loss = step(f, o, x, key=jr.fold_in(jr.key(1), i))
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    # three steps in one lax.scan give the same parameters
    multi = make_step(optax.adam(1e-2), steps_per_dispatch=3, donate=False)
    g, _, ls = multi(flow, opt, jnp.stack([x, x, x]), key=jr.key(1))
    assert ls.shape == (3,)
    np.testing.assert_allclose(np.asarray(ls), losses, rtol=1e-5)
    for u, v in zip(jax.tree.leaves(params_of(f)), jax.tree.leaves(params_of(g))):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_make_step_donates_and_skips_non_finite(data):
    x = jnp.asarray(data[:32])
    flow = nux.init(small_flow(), x, key=jr.key(0))
    step = make_step(optax.sgd(0.1))
    opt = step.init(flow)
    keep = jax.tree.map(jnp.copy, flow)
    bad = x.at[0, 0].set(jnp.nan)
    flow2, opt2, loss = step(flow, opt, bad, key=jr.key(0))
    assert not np.isfinite(float(loss))
    assert_trees_equal(params_of(flow2), params_of(keep))  # the update was skipped
    leaf = jax.tree.leaves(params_of(flow))[0]
    assert leaf.is_deleted()  # donated: the input buffers were reused


# ---------------------------------------------------------------------------------------
# losses and metrics
# ---------------------------------------------------------------------------------------


def test_bits_per_dim_of_dequantised_data_is_in_discrete_units():
    # log_prob of UniformDequantization(L) -> Logit -> N(0, I) is the density of v + u on
    # [0, L]^D: -log_prob / (D ln 2) equals the datasets.md formula
    # -(log p(x) - D ln L) / (D ln 2) with x = (v + u) / L and log p(x) the density on [0, 1]^D.
    L, lm = 17, 0.05
    flow = nux.Sequential(nux.UniformDequantization(scale=L), nux.Logit(lm), nux.UnitGaussianPrior())
    v = jr.randint(jr.key(0), (5, 4, 4, 1), 0, L).astype(jnp.float32)
    flow = nux.init(flow, v, key=jr.key(1))
    D = 16
    for i in range(5):
        k = jr.key(10 + i)
        _, lp, rec = nux.capture(flow, v[i], key=k)
        xq = rec["layers[0]"].z  # (v + u) / L
        assert np.all((xq * L >= v[i]) & (xq * L < v[i] + 1))
        y = jnp.log(lm + (1 - 2 * lm) * xq) - jnp.log1p(-(lm + (1 - 2 * lm) * xq))
        log_det = jnp.sum(
            math.log(1 - 2 * lm) - jnp.log(lm + (1 - 2 * lm) * xq) - jnp.log1p(-(lm + (1 - 2 * lm) * xq))
        )
        log_px = jnp.sum(-0.5 * y**2 - 0.5 * math.log(2 * math.pi)) + log_det  # density on [0, 1]^D
        want = -(log_px - D * math.log(L)) / (D * math.log(2))
        np.testing.assert_allclose(bits_per_dim(-lp, (4, 4, 1)), want, rtol=1e-5)


def test_importance_weighted_bound():
    L = 4
    flow = nux.Sequential(
        nux.UniformDequantization(scale=L), nux.Logit(0.05), nux.ActNorm(), nux.UnitGaussianPrior()
    )
    v = jr.randint(jr.key(0), (8, 3), 0, L).astype(jnp.float32)
    flow = nux.init(flow, v, key=jr.key(1))
    key, K = jr.key(2), 6
    iw = importance_weighted_nll(flow, v, key=key, K=K)
    log_w = jnp.stack([batch_log_prob(flow, v, key=k) for k in jr.split(key, K)])
    want = -jnp.mean(jax.nn.logsumexp(log_w, 0) - math.log(K))
    np.testing.assert_allclose(iw, want, rtol=1e-6)
    assert float(iw) < float(-jnp.mean(log_w))  # tighter than the mean single-sample bound
    assert float(iw) >= float(-jnp.mean(jnp.max(log_w, 0)))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        importance_weighted_nll(flow, v, key=None)


def test_reverse_kl_fits_a_2d_gaussian():
    mu = jnp.array([1.0, -2.0])
    cov = jnp.array([[1.0, 0.8], [0.8, 1.5]])
    prec = jnp.linalg.inv(cov)
    log_z = 0.5 * jnp.linalg.slogdet(2 * math.pi * cov)[1]

    def log_target(x):  # unnormalised
        d = x - mu
        return -0.5 * d @ prec @ d

    flow = nux.Sequential(
        nux.ActNorm(), nux.Coupling(hidden_layer_sizes=(16,)), nux.Reverse(),
        nux.Coupling(hidden_layer_sizes=(16,)), nux.Reverse(), nux.Coupling(hidden_layer_sizes=(16,)),
        nux.UnitGaussianPrior(),
    )  # fmt: skip
    flow = nux.init(flow, jr.normal(jr.key(0), (64, 2)), key=jr.key(1))
    step = make_step(
        optax.adam(optax.cosine_decay_schedule(2e-2, 600)), reverse_kl_loss(log_target, n_samples=256)
    )
    opt = step.init(flow)
    kl0 = float(reverse_kl(flow, log_target, key=jr.key(99), n_samples=4096)) + float(log_z)
    for i in range(600):
        flow, opt, _ = step(flow, opt, None, key=jr.fold_in(jr.key(3), i))
    kl = float(reverse_kl(flow, log_target, key=jr.key(99), n_samples=4096)) + float(log_z)
    assert kl0 > 0.5 and abs(kl) < 0.01  # KL(q || p) -> 0
    xs, _ = jax.vmap(lambda k: nux.sample(flow, k))(jr.split(jr.key(5), 20000))
    np.testing.assert_allclose(jnp.mean(xs, 0), mu, atol=0.1)
    np.testing.assert_allclose(jnp.cov(xs.T), cov, atol=0.15)


# ---------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------


def test_fit_trains_validates_and_returns_the_best(data):
    train, valid = data[:200], data[200:]
    flow0 = nux.init(small_flow(), jnp.asarray(train[:32]), key=jr.key(0))
    before = float(nll(flow0, jnp.asarray(valid)))
    flow, hist = fit(small_flow(), train, key=jr.key(0), steps=60, batch_size=32, valid=valid,
                     eval_every=20, optimizer=optax.adam(1e-2), progress=False)  # fmt: skip
    assert len(hist["train_loss"]) == 60 and hist["steps"] == 60 and hist["stop_reason"] == "completed"
    assert hist["valid_step"] == [20, 40, 60]
    best = min(hist["valid_loss"])
    assert (
        hist["best_valid_loss"] == best
        and hist["best_step"] == hist["valid_step"][hist["valid_loss"].index(best)]
    )
    assert best < before
    assert abs(float(nll(flow, jnp.asarray(valid))) - best) < 1e-4  # the returned flow is the best one
    assert hist["bits_per_dim_factor"] == pytest.approx(1 / (2 * math.log(2)))


def test_fit_accepts_a_split_and_epochs():
    split = nux.data.load("8gaussians", n_train=128, n_valid=64, n_test=10)
    flow, hist = fit(
        small_flow(), split, key=jr.key(0), epochs=2, batch_size=32, eval_every=4, progress=False
    )
    assert hist["steps"] == 8 and hist["valid_step"] == [4, 8]


def test_early_stopping(data):
    train = data[:128]
    valid = (data[128:] + np.array([6.0, 6.0], np.float32)).astype(np.float32)  # far away: gets worse
    flow, hist = fit(small_flow(), train, key=jr.key(0), steps=400, batch_size=32, valid=valid,
                     eval_every=5, patience=3, optimizer=optax.adam(3e-2), progress=False)  # fmt: skip
    assert hist["stop_reason"] == "early_stopping"
    i = hist["valid_step"].index(hist["best_step"])
    assert len(hist["valid_step"]) - 1 - i == 3 and hist["steps"] < 400
    assert abs(float(nll(flow, jnp.asarray(valid))) - hist["best_valid_loss"]) < 1e-3


def test_steps_per_dispatch_matches_single_steps(data):
    kw = dict(key=jr.key(0), steps=10, batch_size=32, progress=False, optimizer=optax.adam(1e-2))
    a, ha = fit(small_flow(), data, **kw)
    b, hb = fit(small_flow(), data, steps_per_dispatch=4, **kw)  # 4 + 4 + 1 + 1
    np.testing.assert_allclose(ha["train_loss"], hb["train_loss"], rtol=1e-5)
    for u, v in zip(jax.tree.leaves(params_of(a)), jax.tree.leaves(params_of(b))):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)


def test_clipping_and_warmup(data):
    flow = nux.init(small_flow(), jnp.asarray(data[:32]), key=jr.key(0))
    p0 = params_of(flow)

    def change(**kw):
        f, _ = fit(flow, data, key=jr.key(0), steps=1, batch_size=32, progress=False, **kw)
        d = jax.tree.map(lambda a, b: a - b, params_of(f), p0)
        return math.sqrt(sum(float(jnp.sum(v**2)) for v in jax.tree.leaves(d)))

    plain = change(optimizer=optax.sgd(0.1))
    assert plain > 1e-3
    assert change(optimizer=optax.sgd(0.1), clip_norm=1e-3) == pytest.approx(1e-4, rel=1e-3)
    assert change(optimizer=optax.sgd(0.1), warmup_steps=10) == pytest.approx(plain / 10, rel=1e-4)


def test_non_finite_loss_stops_and_keeps_the_last_good_state(data):
    x = data[:64].copy()
    x[37, 0] = 1000.0  # finite data, but the loss below turns NaN on the batch holding it

    def loss(flow, xb, *, key, cond):
        return nll(flow, xb, key=key, cond=cond) + jnp.where(jnp.any(xb[:, 0] > 100), jnp.nan, 0.0)

    kw = dict(key=jr.key(0), batch_size=8, loss=loss, progress=False, log_every=3, init_batches=1)
    with pytest.warns(RuntimeWarning, match="non-finite at step"):
        flow, hist = fit(small_flow(), x, steps=40, **kw)
    assert hist["stop_reason"] == "non_finite"
    bad = hist["steps"]
    assert 0 <= bad < 40 and len(hist["train_loss"]) == bad and np.all(np.isfinite(hist["train_loss"]))
    if bad > 0:  # the returned flow is exactly the one after `bad` good steps
        ref, _ = fit(small_flow(), x, steps=bad, **kw)
        assert_trees_equal(params_of(flow), params_of(ref))


def test_init_batches_concatenates(data):
    flow, _ = fit(small_flow(), data, key=jr.key(0), steps=0, batch_size=64, init_batches=4, progress=False)
    np.testing.assert_allclose(flow.layers[0].b, data.mean(0), rtol=1e-5, atol=1e-6)  # all 256 examples
    flow1, _ = fit(small_flow(), data, key=jr.key(0), steps=0, batch_size=64, progress=False)
    assert not np.allclose(flow1.layers[0].b, data.mean(0), atol=1e-4)


def test_bad_data_is_a_clear_error(data):
    with pytest.raises(ValueError, match="non-finite values.*example 5"):
        bad = data.copy()
        bad[5, 1] = np.inf
        fit(small_flow(), bad, key=jr.key(0), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"batch_size \(512\) is larger than the data \(256"):
        fit(small_flow(), data, key=jr.key(0), steps=1, batch_size=512, progress=False)
    with pytest.raises(nux.ShapeError, match="leading example axis"):
        fit(small_flow(), data[:, 0], key=jr.key(0), steps=1, progress=False)
    with pytest.raises(nux.ShapeError, match=r"cannot take examples of shape \(1,\)"):
        fit(small_flow(), data[:, :1], key=jr.key(0), steps=1, batch_size=8, progress=False)
    flow = nux.init(small_flow(), jnp.asarray(data[:8]), key=jr.key(0))
    with pytest.raises(nux.ShapeError, match=r"initialised for examples of shape \(2,\).*\(3,\)"):
        fit(flow, np.zeros((16, 3), np.float32), key=jr.key(0), steps=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="exactly one of `steps` and `epochs`"):
        fit(small_flow(), data, key=jr.key(0), progress=False)


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------


def test_resume_reproduces_the_uninterrupted_run(tmp_path, data):
    kw = dict(key=jr.key(0), batch_size=32, valid=data[200:], eval_every=10, progress=False,
              optimizer=optax.adam(1e-2), checkpoint_every=5, warmup_steps=7)  # fmt: skip
    full, h_full = fit(small_flow(), data[:200], steps=40, checkpoint_dir=tmp_path / "a", **kw)
    half, h_half = fit(small_flow(), data[:200], steps=20, checkpoint_dir=tmp_path / "b", **kw)
    assert h_half["steps"] == 20 and h_half["train_loss"] == h_full["train_loss"][:20]
    resumed, h_res = fit(small_flow(), data[:200], steps=40, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert_trees_equal(params_of(resumed), params_of(full))
    assert h_res["train_loss"] == h_full["train_loss"] and h_res["valid_loss"] == h_full["valid_loss"]
    assert h_res["best_step"] == h_full["best_step"]
    # the last flow and the optimizer state are in the checkpoint too, and equal
    ca = load_checkpoint(tmp_path / "a" / "checkpoint.eqx", flow=full, opt_state=_opt_like(full, kw))
    cb = load_checkpoint(tmp_path / "b" / "checkpoint.eqx", flow=full, opt_state=_opt_like(full, kw))
    assert ca["step"] == cb["step"] == 40
    assert_trees_equal((ca["flow"], ca["opt_state"]), (cb["flow"], cb["opt_state"]))
    # the final flow file loads into an un-initialised flow
    loaded = nux.load(tmp_path / "b" / "flow.eqx", small_flow())
    assert_trees_equal(params_of(loaded), params_of(resumed))


def test_parameter_average_matches_a_numpy_ema():
    from nux_eqx.train._fit import _parameter_average

    t = _parameter_average(0.9)
    params = {"w": jnp.zeros(3)}
    state = t.init(params)
    rng = np.random.default_rng(0)
    ref, p = np.zeros(3), np.zeros(3)
    for i in range(30):
        u = rng.normal(size=3).astype(np.float32)
        out, state = t.update({"w": jnp.asarray(u)}, state, params)
        np.testing.assert_array_equal(out["w"], u)  # the updates pass through
        params = {"w": params["w"] + u}
        p = p + u
        d = min(0.9, (1 + i) / (10 + i))
        ref = d * ref + (1 - d) * p
        np.testing.assert_allclose(state.average["w"], ref, rtol=1e-5, atol=1e-6)


def test_fit_with_ema_returns_and_validates_the_average(tmp_path, data):
    kw = dict(key=jr.key(0), batch_size=32, progress=False, optimizer=optax.adam(1e-2), ema=0.9)
    flow, h = fit(small_flow(), data, steps=30, checkpoint_dir=tmp_path / "a", **kw)
    ck = load_checkpoint(
        tmp_path / "a" / "checkpoint.eqx",
        flow=flow,
        opt_state=_make_opt(kw["optimizer"], ema=0.9).init(params_of(flow)),
    )
    # the returned flow is the average, not the last iterate
    assert_trees_equal(params_of(flow), ck["opt_state"][-1].average)
    last = jax.tree.leaves(params_of(ck["flow"]))
    assert any(not np.allclose(a, b) for a, b in zip(last, jax.tree.leaves(params_of(flow))))
    # validation uses the averaged parameters: the best flow's loss is the recorded one
    flow, h = fit(small_flow(), data[:200], steps=30, valid=data[200:], eval_every=10, **kw)
    assert math.isclose(float(nll(flow, jnp.asarray(data[200:]))), h["best_valid_loss"], rel_tol=1e-5)
    # resuming needs the same ema; a run resumed with it is exact
    with pytest.raises(ValueError, match="ema=0.9, this run has ema=None"):
        fit(small_flow(), data, steps=40, checkpoint_dir=tmp_path / "a", resume=True, **{**kw, "ema": None})
    half_dir = tmp_path / "b"
    fit(small_flow(), data, steps=15, checkpoint_dir=half_dir, **kw)
    resumed, _ = fit(small_flow(), data, steps=30, checkpoint_dir=half_dir, resume=True, **kw)
    whole, _ = fit(small_flow(), data, steps=30, **kw)
    assert_trees_equal(params_of(resumed), params_of(whole))
    with pytest.raises(ValueError, match="ema must be in"):
        fit(small_flow(), data, steps=1, **{**kw, "ema": 1.0})


def _make_opt(optimizer, warmup_steps=0, ema=None):
    from nux_eqx.train._fit import _make_optimizer

    return _make_optimizer(optimizer, None, warmup_steps, ema)


def _opt_like(flow, kw):
    from nux_eqx.train._fit import _make_optimizer

    return _make_optimizer(kw["optimizer"], None, kw["warmup_steps"]).init(params_of(flow))


def test_corrupt_or_mismatched_checkpoint_is_left_alone(tmp_path, data):
    d = tmp_path / "run"
    kw = dict(key=jr.key(0), batch_size=32, progress=False, checkpoint_dir=d)
    fit(small_flow(), data, steps=3, **kw)
    path = d / "checkpoint.eqx"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) - 50])
    cut = path.read_bytes()
    with pytest.raises(nux.CheckpointError, match="cannot resume.*truncated or corrupt.*left as it is"):
        fit(small_flow(), data, steps=6, resume=True, **kw)
    assert path.read_bytes() == cut and sorted(p.name for p in d.iterdir()) == ["checkpoint.eqx", "flow.eqx"]
    path.write_bytes(b"garbage\n")
    with pytest.raises(nux.CheckpointError, match="not a nux_eqx checkpoint"):
        fit(small_flow(), data, steps=6, resume=True, **kw)
    assert path.read_bytes() == b"garbage\n"
    path.write_bytes(good)
    with pytest.raises(ValueError, match="batch_size=32, this run has batch_size=16"):
        fit(small_flow(), data, steps=6, resume=True, **{**kw, "batch_size": 16})
    nux.save(path, nux.init(small_flow(), jnp.asarray(data[:4]), key=jr.key(0)))  # a plain flow file
    with pytest.raises(nux.CheckpointError, match="not a training checkpoint"):
        fit(small_flow(), data, steps=6, resume=True, **kw)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, jax.random as jr, nux_eqx as nux
    flow = nux.Sequential(nux.ActNorm(), nux.Coupling(hidden_layer_sizes=(16,)), nux.UnitGaussianPrior())
    x = np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32)
    nux.train.fit(flow, x, key=jr.key(0), steps=10**7, batch_size=32, progress=False,
                  checkpoint_dir=sys.argv[1], checkpoint_every=3)
    """
)


def test_sigkill_leaves_a_loadable_checkpoint(tmp_path):
    d = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, str(script), str(d)], env=env)
    try:
        path = d / "checkpoint.eqx"
        deadline = time.time() + 240
        while time.time() < deadline and not path.exists():
            time.sleep(0.2)
        assert path.exists(), "the training subprocess wrote no checkpoint"
        time.sleep(1.0)  # let it overwrite the checkpoint many times
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    flow = nux.Sequential(nux.ActNorm(), nux.Coupling(hidden_layer_sizes=(16,)), nux.UnitGaussianPrior())
    info = nux.train.read_checkpoint_info(path)
    assert info["step"] >= 3 and info["step"] % 3 == 0
    # (a kill during a write may leave a temporary `.tmp-*` file next to it; never a torn checkpoint)
    x = np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32)
    out, hist = nux.train.fit(flow, x, key=jr.key(0), steps=info["step"] + 2, batch_size=32, progress=False,
                              checkpoint_dir=d, checkpoint_every=3, resume=True)  # fmt: skip
    assert hist["steps"] == info["step"] + 2 and len(hist["train_loss"]) == info["step"] + 2
    assert hist["train_loss"][: info["step"]] == info["history"]["train_loss"]


# ---------------------------------------------------------------------------------------
# batch_sample: nux_eqx.sample over split keys, in chunks.
# ---------------------------------------------------------------------------------------


def test_batch_sample_equals_vmapped_sample_in_chunks_with_a_remainder():
    x = jr.normal(jr.key(0), (64, 2))
    flow = nux.init(nux.RealNVP(2, (8,)), x, key=jr.key(1))
    key = jr.key(2)
    want_x, want_q = jax.vmap(lambda k: nux.sample(flow, k, temperature=0.7))(jr.split(key, 10))
    for chunk in (4, 10, 64, None):  # 10 = 2 chunks of 4 + a remainder of 2; >= n: one vmap
        got_x, got_q = nux.train.batch_sample(flow, key, 10, temperature=0.7, chunk_size=chunk)
        assert got_x.shape == (10, 2) and got_q.shape == (10,)
        assert jnp.allclose(got_x, want_x, atol=1e-5) and jnp.allclose(got_q, want_q, atol=1e-4)


def test_batch_sample_passes_one_conditioning_per_example():
    x = jr.normal(jr.key(0), (64, 2))
    c = jr.normal(jr.key(3), (64, 3))
    flow = nux.init(
        nux.Sequential(nux.Coupling(hidden_layer_sizes=(8,)), nux.UnitGaussianPrior()), x, key=jr.key(1), cond=c
    )
    key = jr.key(2)
    want = jax.vmap(lambda k, ci: nux.sample(flow, k, cond=ci)[0])(jr.split(key, 5), c[:5])
    got, _ = nux.train.batch_sample(flow, key, 5, cond=c[:5], chunk_size=2)
    assert jnp.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match=r"leading axis of size n=5"):
        nux.train.batch_sample(flow, key, 5, cond=c[:4])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, r"`n` must be a Python int >= 1"),
        ({"n": 2.0}, r"`n` must be a Python int >= 1"),
        ({"n": 4, "chunk_size": 0}, r"`chunk_size` must be an int >= 1"),
    ],
)
def test_batch_sample_refuses_bad_sizes(kwargs, match):
    x = jr.normal(jr.key(0), (16, 2))
    flow = nux.init(nux.Sequential(nux.ActNorm(), nux.UnitGaussianPrior()), x, key=jr.key(1))
    with pytest.raises(ValueError, match=match):
        nux.train.batch_sample(flow, jr.key(2), **kwargs)
    with pytest.raises(TypeError, match=r"`key` must be one PRNG key"):
        nux.train.batch_sample(flow, jr.split(jr.key(2), 3), 4)
    with pytest.raises(ValueError, match=r"static_argnames='n'"):
        jax.jit(nux.train.batch_sample)(flow, jr.key(2), 4)


# ---------------------------------------------------------------------------------------
# compiler_options: forwarded to every compilation of make_step and fit.
# ---------------------------------------------------------------------------------------

LEAN_CPU = nux.train.LEAN_CPU_COMPILE  # XLA accepts every option of the preset


def _small_flow_and_data():
    x = jr.normal(jr.key(0), (96, 3))
    return nux.Sequential(nux.ActNorm(), nux.Coupling(hidden_layer_sizes=(8,)), nux.UnitGaussianPrior()), x


def test_make_step_compiles_with_the_given_options_and_computes_the_same():
    model, x = _small_flow_and_data()
    flow = nux.init(model, x, key=jr.key(1))
    losses = {}
    for name, opts in (("default", None), ("lean", LEAN_CPU)):
        step = nux.train.make_step(optax.adam(1e-2), compiler_options=opts)
        f, o = jax.tree.map(jnp.copy, flow), step.init(flow)
        out = []
        for i in range(5):
            f, o, loss = step(f, o, x[: 32], key=jr.key(i))
            out.append(float(loss))
        losses[name] = out
    assert losses["lean"] == pytest.approx(losses["default"], rel=1e-5, abs=1e-5)
    # the options reach XLA: an unknown one is refused by the compiler
    bogus = nux.train.make_step(optax.adam(1e-2), compiler_options={"xla_no_such_option": 1})
    with pytest.raises(Exception, match="xla_no_such_option"):
        bogus(flow, bogus.init(flow), x[:32], key=jr.key(0))
    with pytest.raises(TypeError, match=r"`compiler_options` must be 'auto' \(the default\), a dict"):
        nux.train.make_step(compiler_options=["xla_cpu_use_fusion_emitters"])


def test_fit_compiles_init_steps_and_validation_with_the_given_options():
    model, x = _small_flow_and_data()
    kw = dict(key=jr.key(2), steps=20, batch_size=32, valid=x[:40], eval_every=10, progress=False)
    f0, h0 = nux.train.fit(model, x, **kw)
    f1, h1 = nux.train.fit(model, x, compiler_options=LEAN_CPU, **kw)
    assert h1["train_loss"] == pytest.approx(h0["train_loss"], rel=1e-5, abs=1e-5)
    assert h1["valid_loss"] == pytest.approx(h0["valid_loss"], rel=1e-5, abs=1e-5)
    bogus = {"xla_no_such_option": 1}
    with pytest.raises(Exception, match="xla_no_such_option"):  # at init
        nux.train.fit(model, x, compiler_options=bogus, **kw)
    with pytest.raises(Exception, match="xla_no_such_option"):  # an initialised flow: at the step
        nux.train.fit(f0, x, compiler_options=bogus, **kw)


# ---------------------------------------------------------------------------------------
# compiler_options="auto" (the default): lean compilation for images on CPU.
# ---------------------------------------------------------------------------------------


def test_auto_compiler_options_are_lean_for_images_on_cpu_only(monkeypatch):
    auto = nux.train.auto_compiler_options
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")  # the rule reads only this
    assert auto(3) == LEAN_CPU and auto(4) == LEAN_CPU
    assert auto(1) is None and auto(2) is None and auto(None) is None
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert auto(3) is None
    with pytest.raises(ValueError, match="'auto'"):
        nux.train.make_step(compiler_options="lean")


def _image_flow_and_data():
    x = jnp.floor(17 * jr.uniform(jr.key(0), (16, 4, 4, 2)))
    model = nux.Sequential(
        nux.UniformDequantization(17), nux.Logit(), nux.Coupling(n_channels=4), nux.UnitGaussianPrior()
    )
    return model, x


@pytest.mark.parametrize("data", ["vector", "image", "image_k2"])
def test_make_step_auto_compiles_images_lean(monkeypatch, data):
    import nux_eqx.train._step as step_module

    seen = []
    real = step_module.LeanJit

    def spy(fn, donate="none", compiler_options=None):
        seen.append(compiler_options)
        return real(fn, donate=donate, compiler_options=compiler_options)

    monkeypatch.setattr(step_module, "LeanJit", spy)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")  # as on CI, whatever runs the test
    model, x = _image_flow_and_data() if data != "vector" else _small_flow_and_data()
    flow = nux.init(model, x, key=jr.key(1))
    k = 2 if data == "image_k2" else 1
    step = nux.train.make_step(steps_per_dispatch=k)
    batch = x[:8] if k == 1 else jnp.stack([x[:8], x[8:16]])
    f, o, loss = step(flow, step.init(flow), batch, key=jr.key(2))
    assert jnp.all(jnp.isfinite(loss))
    step(f, o, batch, key=jr.key(3))  # the same compiled step again
    assert seen == [None if data == "vector" else LEAN_CPU]


def test_fit_auto_resolves_from_the_data(monkeypatch):
    from nux_eqx.train._fit import check_settings

    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")

    kw = dict(
        steps=1, epochs=None, batch_size=4, cond=None, valid=None, valid_cond=None, eval_every=1,
        eval_batch_size=4, patience=None, checkpoint_every=1, log_every=1, steps_per_dispatch=1,
        max_seconds=None, devices=None, ema=None,
    )
    assert check_settings(np.zeros((8, 4, 4, 1)), **kw).compiler_options == LEAN_CPU
    assert check_settings(np.zeros((8, 3)), **kw).compiler_options is None
    assert check_settings(np.zeros((8, 4, 4, 1)), compiler_options=None, **kw).compiler_options is None


def test_batch_utilities_compile_themselves_outside_jit(monkeypatch):
    import nux_eqx.train._losses as losses_module

    model, x = _image_flow_and_data()
    flow = nux.init(model, x, key=jr.key(1))
    seen = []
    real = losses_module.filter_jit_with

    def spy(fn, opts):
        seen.append((fn.__name__, opts))
        return real(fn, opts)

    monkeypatch.setattr(losses_module, "filter_jit_with", spy)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    lp = nux.train.batch_log_prob(flow, x, key=jr.key(2))
    xs, lq = nux.train.batch_sample(flow, jr.key(3), 5, chunk_size=2)
    assert seen == [("_batch_log_prob", LEAN_CPU), ("_batch_sample", LEAN_CPU)]
    # inside the user's jit they are part of that computation: the same values
    lp_jit = jax.jit(lambda f, x, k: nux.train.batch_log_prob(f, x, key=k))(flow, x, jr.key(2))
    xs_jit, _ = jax.jit(lambda f, k: nux.train.batch_sample(f, k, 5, chunk_size=2))(flow, jr.key(3))
    assert len(seen) == 2
    np.testing.assert_allclose(lp, lp_jit, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(xs, xs_jit, rtol=1e-5, atol=1e-5)
    assert lq.shape == (5,) and xs.shape == (5, 4, 4, 2)
