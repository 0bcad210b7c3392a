"""The `nux-eqx` command: errors exit with status 2 and never touch the disk; a tiny run works."""

import json
import math
import os
import stat
import subprocess
import sys
import time

import pytest

from nux_eqx import cli


def run(*argv):
    return cli.main(list(argv))


def test_list(capsys):
    assert run("list") == 0
    out = capsys.readouterr().out
    assert "digits" in out and "8gaussians" in out and "glow" in out and "nsf" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "nope"], "unknown dataset 'nope'; choose one of:.*digits"),
        (["train", "--model", "nope"], "unknown model 'nope'; choose one of: glow"),
        (["train", "--data", "8gaussians", "--model", "glow"], "takes image data.*choose one of: realnvp"),
        (["train", "--ema", "1"], "--ema must be in \\[0, 1\\)"),
    ],
)
def test_bad_names_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert run(*argv, "--out", str(out)) == 2
    import re

    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_missing_optional_dataset(tmp_path, capsys, monkeypatch):
    import nux_eqx.data as data

    def missing(name, **kw):
        raise FileNotFoundError("Fashion-MNIST is not installed: `apt-get install dataset-fashion-mnist`")

    monkeypatch.setattr(data, "load", missing)
    assert run("train", "--data", "fashion_mnist", "--out", str(tmp_path / "r")) == 2
    assert "not installed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "argv, option",
    [
        (["train", "--steps", "-5"], "--steps"),
        (["train", "--steps", "0"], "--steps"),
        (["train", "--minutes", "0"], "--minutes"),
        (["train", "--minutes", "nan"], "--minutes"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--lr", "-0.001"], "--lr"),
        (["train", "--lr", "inf"], "--lr"),
        (["train", "--ema", "-0.5"], "--ema"),
        (["train", "--seed", "-1"], "--seed"),
        (["train", "--eval-every", "0"], "--eval-every"),
        (["train", "--checkpoint-every", "-3"], "--checkpoint-every"),
        (["train", "--steps", "ten"], "--steps"),
        (["train", "--resume", "--steps", "-1"], "--steps"),
        (["eval", "RUN", "--batch-size", "0"], "--batch-size"),
        (["sample", "RUN", "-n", "0"], "-n"),
        (["sample", "RUN", "-n", "-4"], "-n"),
        (["sample", "RUN", "--temperature", "0"], "--temperature"),
        (["sample", "RUN", "--temperature", "-0.7"], "--temperature"),
        (["sample", "RUN", "--temperature", "nan"], "--temperature"),
        (["sample", "RUN", "--temperature", "inf"], "--temperature"),
    ],
)
def test_bad_option_values_exit_2_before_touching_the_disk(tmp_path, capsys, monkeypatch, argv, option):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    argv = [str(out) if a == "RUN" else a for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(out)]
    assert run(*argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "error" in lines[0], err
    assert "Traceback" not in err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_bad_option_value_from_the_shell_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run(
        [sys.executable, "-m", "nux_eqx.cli", "train", "--steps", "-5", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "--steps" in p.stderr and "Traceback" not in p.stderr
    assert os.listdir(tmp_path) == []


def test_batch_larger_than_the_data_is_refused_before_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", "8gaussians", "--model", "realnvp", "--batch-size", "100000000"]
    assert run(*argv, "--out", str(out)) == 2
    assert "--batch-size 100000000 is larger than the training set" in capsys.readouterr().err
    assert not out.exists()


def test_a_failed_new_run_leaves_no_folder_behind(tmp_path, monkeypatch):
    import nux_eqx.train

    def broken(*a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(nux_eqx.train, "fit", broken)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        run(
            "train",
            "--data",
            "8gaussians",
            "--model",
            "realnvp",
            "--steps",
            "2",
            "--quiet",
            "--out",
            str(out),
        )
    assert not out.exists()  # the next attempt is not blocked by a half-made folder


@pytest.mark.parametrize(
    "flag, expected", [([], "auto"), (["--lean-compile"], "lean"), (["--no-lean-compile"], None)]
)
def test_train_lean_compile_passes_the_preset_to_fit(tmp_path, monkeypatch, flag, expected):
    import nux_eqx.train

    seen = {}

    def spy(*a, **kw):
        seen["options"] = kw.get("compiler_options")
        raise RuntimeError("stop here")

    monkeypatch.setattr(nux_eqx.train, "fit", spy)
    with pytest.raises(RuntimeError, match="stop here"):
        run("train", "--data", "8gaussians", "--model", "realnvp", "--steps", "2", "--quiet",
            "--out", str(tmp_path / "run"), *flag)
    assert seen["options"] == (nux_eqx.train.LEAN_CPU_COMPILE if expected == "lean" else expected)


def test_lean_compile_is_for_cpu_only(monkeypatch, capsys):
    import jax

    assert cli._compiler_options(False) is None
    assert cli._compiler_options(None) == "auto"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert cli._compiler_options(True) is None
    assert "--lean-compile is for CPU" in capsys.readouterr().err


def test_every_option_has_help_with_its_default():
    parser = cli.build_parser()
    for name in ("train", "eval", "sample"):
        sub = parser.commands[name]
        for action in sub._actions:
            if "-h" in action.option_strings:
                continue
            assert action.help, (name, action.dest)
            assert "\n" not in action.help
            if action.option_strings:
                assert "default" in action.help, (name, action.dest, action.help)
        sub.format_help()  # renders


def _settings(argv):
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    return cli._train_settings(args)


def test_resume_takes_the_runs_own_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    saved = {
        "data": "8gaussians",
        "model": "nsf",
        "batch_size": 32,
        "lr": 0.003,
        "ema": 0.0,
        "seed": 4,
        "steps": 700,
        "minutes": None,
        "eval_every": 50,
        "checkpoint_every": 70,
    }
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**saved, "resolved": {"shape": [2], "levels": None}}))

    # `--resume` alone (with the folder): every setting is the run's own
    run_, s = _settings(["train", "--out", str(folder), "--resume"])
    assert run_ == str(folder) and s == saved
    # explicit options that match are accepted; a new budget replaces the old one
    _, s = _settings(
        ["train", "--out", str(folder), "--resume", "--lr", "3e-3", "--seed", "4", "--minutes", "2"]
    )
    assert s == {**saved, "steps": None, "minutes": 2.0}
    _, s = _settings(["train", "--out", str(folder), "--resume", "--steps", "900", "--eval-every", "10"])
    assert s == {**saved, "steps": 900, "eval_every": 10}
    # an explicit option that differs is refused, naming it
    for argv, flag in (
        (["--lr", "0.001"], "--lr 0.003"),
        (["--model", "realnvp"], "--model nsf"),
        (["--batch-size", "64"], "--batch-size 32"),
        (["--ema", "0.999"], "--ema 0.0"),
    ):
        with pytest.raises(cli.UserError, match=f"cannot resume.*trained with {flag}"):
            _settings(["train", "--out", str(folder), "--resume", *argv])
    # the default run folder: `nux-eqx train --resume` alone continues runs/digits-glow-seed0
    default = tmp_path / "runs" / "digits-glow-seed0"
    default.mkdir(parents=True)
    (default / "config.json").write_text(
        json.dumps(
            {
                "data": "digits",
                "model": "glow",
                "batch_size": 16,
                "lr": 0.01,
                "ema": 0.9,
                "seed": 0,
                "steps": None,
                "minutes": 3.0,
            }
        )
    )
    run_, s = _settings(["train", "--resume"])
    assert run_ == os.path.join("runs", "digits-glow-seed0")
    assert (s["batch_size"], s["lr"], s["ema"], s["minutes"], s["steps"]) == (16, 0.01, 0.9, 3.0, None)
    assert (s["eval_every"], s["checkpoint_every"]) == (250, 500)  # older config.json: the defaults
    # without --resume the settings are the defaults and the command line
    _, s = _settings(["train", "--out", str(tmp_path / "new"), "--steps", "5"])
    assert s == {**cli.TRAIN_DEFAULTS, "steps": 5, "minutes": None}


def test_command_wall_time_counts_from_the_process_start(tmp_path):
    code = (
        "import time; time.sleep(1.5); from nux_eqx import cli; "
        "print(time.time() - cli._process_start_time())"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    age = float(p.stdout.strip().splitlines()[-1])
    assert 1.5 <= age < 120 and math.isfinite(age)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_write_uses_the_umask(tmp_path, umask):
    from nux_eqx._serialise import atomic_write

    old = os.umask(umask)
    try:
        path = tmp_path / "sub" / "f.json"
        atomic_write(path, b"{}")
        atomic_write(path, b'{"a": 1}')  # replacing keeps it atomic and the mode
        with open(tmp_path / "plain", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert path.read_bytes() == b'{"a": 1}'
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert sorted(os.listdir(path.parent)) == ["f.json"]  # no temporary file left over


def test_save_and_checkpoint_use_the_umask(tmp_path):
    import jax
    import jax.numpy as jnp
    import optax

    import nux_eqx as nux
    from nux_eqx.train import save_checkpoint

    flow = nux.init(
        nux.Sequential(nux.ActNorm(), nux.UnitGaussianPrior()), jnp.ones((4, 2)), key=jax.random.key(0)
    )
    old = os.umask(0o022)
    try:
        nux.save(tmp_path / "flow.eqx", flow)
        params = nux.trainable(flow)[0]
        save_checkpoint(
            tmp_path / "ck.eqx",
            flow=flow,
            opt_state=optax.adam(1e-3).init(params),
            key=jax.random.key(0),
            step=1,
            history={},
        )
    finally:
        os.umask(old)
    for name in ("flow.eqx", "ck.eqx"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


def test_train_eval_sample_resume(tmp_path, capsys):
    umask = 0o027
    old_umask = os.umask(umask)
    try:
        _train_eval_sample_resume(tmp_path, capsys, umask)
    finally:
        os.umask(old_umask)


def _train_eval_sample_resume(tmp_path, capsys, umask):
    out = str(tmp_path / "run")
    args = [
        "train",
        "--data",
        "8gaussians",
        "--model",
        "realnvp",
        "--batch-size",
        "128",
        "--quiet",
        "--out",
        out,
    ]
    assert run(*args, "--steps", "6", "--eval-every", "3", "--checkpoint-every", "3") == 0
    metrics = json.loads(open(os.path.join(out, "metrics.json")).read())
    assert metrics["steps"] == 6 and metrics["parameters"] > 0
    assert {"nll"} <= set(metrics["test"]) and "versions" in metrics
    for name in (
        "config.json",
        "loss.png",
        "samples.png",
        "checkpoints/flow.eqx",
        "checkpoints/checkpoint.eqx",
    ):
        assert os.path.exists(os.path.join(out, name)), name
    before = open(os.path.join(out, "checkpoints", "checkpoint.eqx"), "rb").read()

    # the folder exists: refused without --resume, nothing overwritten
    assert run(*args, "--steps", "6") == 2
    assert "already exists" in capsys.readouterr().err
    # a different configuration: refused
    assert run(*args[:-1], out, "--steps", "9", "--resume", "--lr", "0.01") == 2
    assert "cannot resume" in capsys.readouterr().err
    assert run(*args[:-1], out, "--steps", "9", "--resume", "--ema", "0") == 2
    assert "--ema 0.999, this command says 0" in capsys.readouterr().err
    assert open(os.path.join(out, "checkpoints", "checkpoint.eqx"), "rb").read() == before

    # resume continues to 9 steps with the run's own settings: only the folder, the new
    # budget and an option that matches are given (data, model, cadences come from config.json)
    t0 = time.time()
    assert run("train", "--out", out, "--resume", "--steps", "9", "--batch-size", "128", "--quiet") == 0
    elapsed = time.time() - t0
    metrics = json.loads(open(os.path.join(out, "metrics.json")).read())
    assert metrics["steps"] == 9
    config = json.loads(open(os.path.join(out, "config.json")).read())
    assert (config["data"], config["model"], config["eval_every"], config["steps"]) == (
        "8gaussians",
        "realnvp",
        3,
        9,
    )
    # the whole command (data, init, evaluation, pictures), not only the training loop
    assert elapsed - 0.5 <= metrics["command_wall_time_s"] <= elapsed

    # every file of the run gets the user's umask, as the pictures do (not mkstemp's 0o600)
    want = 0o666 & ~umask
    for name in (
        "config.json",
        "metrics.json",
        "history.json",
        "loss.png",
        "checkpoints/flow.eqx",
        "checkpoints/checkpoint.eqx",
    ):
        assert stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) == want, name

    assert run("eval", out) == 0
    assert "nll" in capsys.readouterr().out
    assert run("sample", out, "-n", "16", "--temperature", "0.5") == 0
    assert os.path.exists(os.path.join(out, "samples-t0.5.png"))


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = str(tmp_path / "run")
    cmd = [
        sys.executable,
        "-m",
        "nux_eqx.cli",
        "train",
        "--data",
        "8gaussians",
        "--model",
        "realnvp",
        "--steps",
        "1000000",
        "--checkpoint-every",
        "1000000",
        "--quiet",
        "--out",
        out,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "training" in proc.stdout.readline()
    time.sleep(40)  # past compilation, inside the training loop
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    ckpt = os.path.join(out, "checkpoints", "checkpoint.eqx")
    assert os.path.exists(ckpt)
    from nux_eqx.train import read_checkpoint_info

    done = read_checkpoint_info(ckpt)["step"]
    assert done > 0
    assert (
        cli.main(
            [
                "train",
                "--data",
                "8gaussians",
                "--model",
                "realnvp",
                "--steps",
                str(done + 3),
                "--quiet",
                "--out",
                out,
                "--resume",
            ]
        )
        == 0
    )
    assert json.loads(open(os.path.join(out, "metrics.json")).read())["steps"] == done + 3


def test_unreadable_config_is_a_user_error(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    assert run("train", "--out", str(folder), "--resume") == 2
    assert "cannot read" in capsys.readouterr().err
    assert run("eval", str(folder)) == 2


def _layout(flow):
    """What a ready vector flow mixes its features with: the class between the scanned
    couplings, or the ordering of MAF's first layer."""
    import nux_eqx as nux

    mades = [f for f in flow.layers if isinstance(f, nux.MaskedAutoregressive)]
    return mades[0].ordering if mades else type(flow.layers[0].block.layers[-1]).__name__


@pytest.mark.parametrize(
    "model, option, written, default",
    [
        ("realnvp", {"permutation": "random"}, "Permute", "Roll"),
        ("nsf", {"permutation": "roll"}, "Roll", "Permute"),
        ("maf", {"ordering": "random"}, "random", "sequential"),
        ("maf", {"ordering": "data_first"}, "sequential", "sequential"),
    ],
)
def test_resume_keeps_the_runs_layout(tmp_path, monkeypatch, model, option, written, default):
    """RealNVP mixes features with `Roll()` by default, NSF with random permutations, MAF
    orders its first layer as the data; a run written otherwise (an earlier default, say)
    resumes as it was written, and a fresh run takes the default."""
    import dataclasses

    import nux_eqx as nux

    out = str(tmp_path / "run")
    args = ["train", "--data", "8gaussians", "--model", model, "--batch-size", "64", "--quiet", "--out", out]
    spec = cli.MODELS[model]
    old = dataclasses.replace(spec, build=lambda split: spec.build(split, **option))
    monkeypatch.setitem(cli.MODELS, model, old)
    assert run(*args, "--steps", "4", "--eval-every", "2", "--checkpoint-every", "2") == 0
    monkeypatch.setitem(cli.MODELS, model, spec)
    assert run(*args, "--steps", "6", "--eval-every", "2", "--checkpoint-every", "2", "--resume") == 0
    assert json.loads(open(os.path.join(out, "metrics.json")).read())["steps"] == 6
    assert _layout(nux.load_run(out)) == written
    fresh = str(tmp_path / "fresh")
    assert run(*args[:-1], fresh, "--steps", "2") == 0
    assert _layout(nux.load_run(fresh)) == default


@pytest.mark.parametrize("data, halves", [("8gaussians", "floor"), ("patches", "floor"), ("patches", "ceil")])
def test_resume_of_a_run_in_the_unrolled_layout_of_0_1(tmp_path, monkeypatch, capsys, data, halves):
    """RealNVP and NSF scan their layers after 0.1, and split odd sizes ceil(d/2); a run
    written with 0.1's layout (unrolled, floor(d/2): `patches` is 63-D), or unrolled with
    the later ceil split, resumes in its own layout (its checkpoint decides)."""
    import dataclasses

    import jax

    import nux_eqx as nux

    out = str(tmp_path / "run")
    args = [
        "train",
        "--data",
        data,
        "--model",
        "realnvp",
        "--batch-size",
        "64",
        "--quiet",
        "--out",
        out,
    ]
    spec = cli.MODELS["realnvp"]
    unrolled = dataclasses.replace(spec, build=lambda split: spec.build_unrolled(split, halves=halves))
    monkeypatch.setitem(cli.MODELS, "realnvp", unrolled)
    assert run(*args, "--steps", "4", "--eval-every", "2", "--checkpoint-every", "2") == 0
    monkeypatch.setitem(cli.MODELS, "realnvp", spec)
    assert run(*args, "--steps", "6", "--eval-every", "2", "--checkpoint-every", "2", "--resume") == 0
    metrics = json.loads(open(os.path.join(out, "metrics.json")).read())
    assert metrics["steps"] == 6
    flow = nux.load_run(out)
    assert not any(isinstance(f, nux.Repeat) for f in flow.layers)
    assert all(f.split == halves for f in flow.layers if isinstance(f, nux.Coupling))
    x = cli._load_data(data, 0).test[:4]
    assert jax.numpy.isfinite(nux.train.batch_log_prob(flow, x)).all()


def test_resume_from_an_unreadable_checkpoint_is_a_one_line_error(tmp_path, capsys):
    """A checkpoint that fit(resume=True) refuses (here: truncated) is a user error with
    exit status 2 and one line on stderr, not a traceback; the file is left as it was."""
    out = str(tmp_path / "run")
    args = [
        "train",
        "--data",
        "8gaussians",
        "--model",
        "realnvp",
        "--batch-size",
        "64",
        "--quiet",
        "--out",
        out,
    ]
    assert run(*args, "--steps", "2", "--eval-every", "2", "--checkpoint-every", "2") == 0
    ckpt = os.path.join(out, "checkpoints", "checkpoint.eqx")
    data = open(ckpt, "rb").read()
    open(ckpt, "wb").write(data[: len(data) // 2])
    capsys.readouterr()
    assert run(*args, "--steps", "4", "--eval-every", "2", "--checkpoint-every", "2", "--resume") == 2
    err = capsys.readouterr().err
    assert err.startswith("nux-eqx: error: ") and "Traceback" not in err, err
    assert "checkpoint" in err and "--out" in err
    assert open(ckpt, "rb").read() == data[: len(data) // 2]
    assert os.path.exists(os.path.join(out, "config.json"))


def test_sample_axes_span_the_data_and_count_far_samples():
    # A flow early in training can draw a sample far out (a MAF's inverse scales up to
    # 100-fold per layer); the vector figure's axes follow the data and say how many
    # samples they leave out, instead of squeezing the data into a corner.
    import numpy as np

    data = np.random.default_rng(0).normal(size=(500, 3))
    samples = data[:64].copy()
    samples[3] = [30.0, 2000.0, -2500.0]
    samples[5, 1] = np.nan
    lo, hi, outside = cli._sample_axes(data, samples)
    assert outside == 2
    assert np.all(lo > -5) and np.all(hi < 5) and np.all(lo < data.min(0) + 1) and np.all(hi > data.max(0) - 1)
    assert cli._sample_axes(data, data[:64])[2] <= 1  # the data's own tails stay inside (bar 0.5 %)
