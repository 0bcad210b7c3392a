"""The `nux-eqx` command: errors exit with status 2 and never touch the disk; a tiny run works."""

import json
import os

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


def test_train_eval_sample_resume(tmp_path, capsys):
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

    # resume continues to 9 steps
    assert run(*args, "--steps", "9", "--resume", "--eval-every", "3", "--checkpoint-every", "3") == 0
    assert json.loads(open(os.path.join(out, "metrics.json")).read())["steps"] == 9

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
