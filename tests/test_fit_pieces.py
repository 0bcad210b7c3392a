"""`fit`'s named pieces, each on its own: the configuration check, resume, validation and
the loop's bookkeeping (fit end to end is in test_train.py)."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import nux_eqx as nux
from nux_eqx.testing import scramble
from nux_eqx.train import nll
from nux_eqx.train._checkpoint import save_checkpoint
from nux_eqx.train._fit import (
    TrainingLoop,
    TrainingState,
    Validator,
    check_settings,
    new_history,
    resume_from,
)

DEFAULTS = dict(
    steps=10,
    epochs=None,
    batch_size=8,
    cond=None,
    valid=None,
    valid_cond=None,
    eval_every=5,
    eval_batch_size=16,
    patience=None,
    checkpoint_every=100,
    log_every=5,
    steps_per_dispatch=1,
    max_seconds=None,
    devices=None,
    ema=None,
)


def settings(x, **kw):
    return check_settings(x, **{**DEFAULTS, **kw})


def small_flow(x):
    flow = nux.Sequential(nux.ActNorm(), nux.Coupling(hidden_layer_sizes=(8,)), nux.UnitGaussianPrior())
    return nux.init(flow, jnp.asarray(x), key=jr.key(0))


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)


def test_check_settings_converts_and_counts(x):
    s = settings(x.astype(np.float64), epochs=3, steps=None)
    assert s.x.dtype == np.float32 and s.n == 40 and s.shape == (2,)
    assert s.total == 3 * (40 // 8)
    assert s.bpd_factor == pytest.approx(1 / (2 * np.log(2)))
    assert s.config() == {
        "n": 40,
        "shape": [2],
        "batch_size": 8,
        "steps_per_dispatch": 1,
        "valid": False,
        "ema": None,
    }
    split = nux.data.Split(train=x[:30], valid=x[30:], test=x[30:])
    s = settings(split)
    assert s.n == 30 and s.xv.shape == (10, 2) and s.config()["valid"]
    assert settings(x, steps=None, max_seconds=1.0).total == 2**62


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(batch_size=41), ValueError, "larger than the data"),
        (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
        (dict(epochs=2), ValueError, "exactly one of `steps` and `epochs`"),
        (dict(steps=None), ValueError, "exactly one of `steps` and `epochs`"),
        (dict(steps=-1), ValueError, "must be >= 0"),
        (dict(steps_per_dispatch=0), ValueError, "steps_per_dispatch"),
        (dict(log_every=0), ValueError, "log_every"),
        (dict(patience=0), ValueError, "patience"),
        (dict(valid=np.zeros((4, 3), np.float32)), nux.ShapeError, "validation examples have shape"),
        (dict(valid_cond=np.zeros((4, 1))), None, None),  # ignored without `valid`
        (dict(cond=np.zeros((40, 1)), valid=np.zeros((4, 2))), ValueError, "valid_cond"),
    ],
)
def test_check_settings_errors(x, kw, error, match):
    if error is None:
        settings(x, **kw)
        return
    with pytest.raises(error, match=match):
        settings(x, **kw)


def test_resume_from_reads_the_state_and_refuses_another_config(tmp_path, x):
    s = settings(x)
    flow = small_flow(x)
    opt = optax.adam(1e-3)
    opt_state = opt.init(nux.trainable(flow)[0])
    history = new_history(s.bpd_factor)
    history.update(train_loss=[1.0, 0.5], steps=2, stop_reason="completed")
    path = str(tmp_path / "checkpoint.eqx")
    moved = scramble(flow, jr.key(3))
    save_checkpoint(
        path,
        flow=moved,
        opt_state=opt_state,
        key=jr.key(7),
        step=2,
        history=history,
        best=None,
        config=s.config(),
    )
    r = resume_from(path, s.config(), flow=flow, opt_state=opt_state, key=jr.key(0))
    assert isinstance(r, TrainingState) and r.step == 2 and r.best is None
    assert r.history["train_loss"] == [1.0, 0.5] and r.history["stop_reason"] is None
    assert np.array_equal(jr.key_data(r.key), jr.key_data(jr.key(7)))
    np.testing.assert_array_equal(np.asarray(r.flow.layers[0].b), np.asarray(moved.layers[0].b))
    with pytest.raises(ValueError, match="batch_size=8.*batch_size=4"):
        resume_from(path, settings(x, batch_size=4).config(), flow=flow, opt_state=opt_state, key=jr.key(0))
    with open(path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(nux.CheckpointError, match="left as it is"):
        resume_from(path, s.config(), flow=flow, opt_state=opt_state, key=jr.key(0))
    assert (tmp_path / "checkpoint.eqx").stat().st_size == 10


@pytest.mark.parametrize("eval_batch_size", [3, 16])
def test_validator_is_the_mean_loss_over_chunks_and_rest(x, eval_batch_size):
    flow = small_flow(x)
    s = settings(x[:30], valid=x[30:], eval_batch_size=eval_batch_size)
    v = Validator(nll, s, jr.key(5))
    assert v.m == 10 // min(eval_batch_size, 10)
    expected = float(jnp.mean(nux.train.batch_log_prob(flow, jnp.asarray(x[30:])))) * -1
    assert v(flow) == pytest.approx(expected, rel=1e-5)


def make_loop(x, **kw):
    s = settings(x[:30], valid=x[30:], **kw)
    flow = small_flow(x)
    opt = optax.adam(1e-3)
    state = TrainingState(
        flow, opt.init(nux.trainable(flow)[0]), None, 0, jr.key(1), new_history(s.bpd_factor)
    )
    return TrainingLoop(
        s,
        state,
        opt=opt,
        loss=nll,
        ckpt=None,
        final_path=None,
        progress=False,
    )


def test_loop_sync_stops_at_the_first_non_finite_loss(x):
    loop = make_loop(x)
    loop.pending = [jnp.array([1.0, 2.0]), jnp.array([3.0])]
    assert loop.sync() is None and loop.history["train_loss"] == [1.0, 2.0, 3.0]
    assert loop.pending == []
    loop.pending = [jnp.array([4.0, jnp.nan, 5.0])]
    assert loop.sync() == 4  # the step number of the bad loss
    assert loop.history["train_loss"] == [1.0, 2.0, 3.0, 4.0]


def test_loop_validate_keeps_the_best_and_counts_patience(x):
    loop = make_loop(x, patience=2)
    assert not loop.validate()
    first = loop.history["best_valid_loss"]
    assert loop.best is not None and loop.history["best_step"] == 0
    assert not loop.validate()  # the same flow: no improvement, 1 of 2
    assert loop.validate()  # 2 of 2: stop
    assert loop.history["best_valid_loss"] == first and loop.history["valid_step"] == [0, 0, 0]


def test_loop_dispatch_advances_and_run_finishes(x):
    loop = make_loop(x, steps=7, steps_per_dispatch=3)
    loop.dispatch(3)
    assert loop.step == 3 and len(loop.pending) == 1 and loop.pending[0].shape == (3,)
    flow, history = loop.run()
    assert history["steps"] == 7 and history["stop_reason"] == "completed"
    assert len(history["train_loss"]) == 7 and history["valid_step"][-1] == 7
    assert isinstance(flow, nux.Sequential)
