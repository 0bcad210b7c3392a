"""`fit` data-parallel over several devices: 4 CPU devices in a subprocess
(`XLA_FLAGS=--xla_force_host_platform_device_count=4` must be set before JAX starts) give
the single-device run's parameters to float tolerance, with each batch split over them."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Every test here starts processes (the four-device ones share a ~50 s subprocess, which
# runs once per xdist worker that gets one of them): the whole module is in the slow tier.
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    r"""
    import json, sys, tempfile
    import jax, jax.numpy as jnp, numpy as np
    import nux_eqx as nux

    assert len(jax.devices()) == 4, jax.devices()
    x = np.asarray(jax.random.normal(jax.random.key(0), (1024, 2))) * np.array([2.0, 0.5])
    out = {}

    def params(f):
        return [np.asarray(a) for a in jax.tree.leaves(nux.trainable(f)[0])]

    def maxdiff(a, b):
        return max(float(np.max(np.abs(u - v))) for u, v in zip(params(a), params(b)))

    def run(devices, **kw):
        kw.setdefault("steps", 40)
        return nux.train.fit(
            nux.RealNVP(4, (32, 32)), x, key=jax.random.key(1), batch_size=64, progress=False,
            valid=x[:256], eval_every=20, devices=devices, **kw,
        )

    f1, h1 = run(jax.devices()[:1])
    f4, h4 = run(None)
    out["n_devices_of_params"] = len(jax.tree.leaves(nux.trainable(f4)[0])[0].sharding.device_set)
    out["param_diff"] = maxdiff(f1, f4)
    out["loss_diff"] = float(np.max(np.abs(np.array(h1["train_loss"]) - h4["train_loss"])))
    out["valid_diff"] = float(np.max(np.abs(np.array(h1["valid_loss"]) - h4["valid_loss"])))

    # k steps per dispatch (lax.scan) splits each of the k batches as well
    f4s, _ = run(None, steps_per_dispatch=5)
    out["scan_param_diff"] = maxdiff(f1, f4s)

    # the loss sees each batch split over the 4 devices
    seen = []

    def loss(flow, xb, *, key=None, cond=None):
        jax.debug.inspect_array_sharding(xb, callback=lambda s: seen.append(str(s.spec)))
        return nux.train.nll(flow, xb, key=key, cond=cond)

    run(None, steps=2, loss=loss)
    out["batch_spec"] = sorted(set(seen))

    # a resumed 4-device run continues exactly
    with tempfile.TemporaryDirectory() as d:
        run(None, steps=20, checkpoint_dir=d)
        fr, hr = run(None, steps=40, checkpoint_dir=d, resume=True)
    out["resume_param_diff"] = maxdiff(f4, fr)

    try:
        nux.train.fit(nux.RealNVP(2, (8,)), x, key=jax.random.key(0), steps=1, batch_size=30, progress=False)
    except ValueError as e:
        out["error"] = str(e)
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def four_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4 --xla_cpu_multi_thread_eigen=false"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


def test_four_devices_match_one(four_devices):
    r = four_devices
    assert r["n_devices_of_params"] == 4  # the state is replicated on all four
    assert r["param_diff"] < 1e-4
    assert r["loss_diff"] < 1e-4
    assert r["valid_diff"] < 1e-4
    assert r["scan_param_diff"] < 1e-4


def test_each_batch_is_split_over_the_devices(four_devices):
    # training batches and validation chunks alike
    assert four_devices["batch_spec"] == ["P('batch',)"]


def test_resume_on_four_devices_is_exact(four_devices):
    assert four_devices["resume_param_diff"] < 1e-6


def test_batch_size_must_divide(four_devices):
    msg = four_devices["error"]
    assert "batch_size (30) must be a multiple of the number of devices (4)" in msg
    assert "32" in msg and "jax.devices()[:1]" in msg


HOST = textwrap.dedent(
    r"""
    import os, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if pid >= 0:  # one of two "hosts" with 2 CPU devices each
        jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
        assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    import numpy as np
    import nux_eqx as nux

    x = np.asarray(jax.random.normal(jax.random.key(0), (1024, 2))) * np.array([2.0, 0.5])
    ckpt = os.path.join(out, f"run{pid}")
    f, h = nux.train.fit(
        nux.RealNVP(4, (32, 32)), x, key=jax.random.key(1), steps=40, batch_size=64, progress=False,
        valid=x[:256], eval_every=20, checkpoint_dir=ckpt if pid <= 0 else None,
    )
    leaves = [np.asarray(a.addressable_data(0)) for a in jax.tree.leaves(nux.trainable(f)[0])]
    np.savez(os.path.join(out, f"params{pid}.npz"), *leaves)
    """
)


def test_two_hosts_match_one_device(tmp_path):
    """`jax.distributed.initialize` on two local processes (2 CPU devices each, gloo
    collectives): `fit` trains over all 4 devices, process 0 writes the checkpoint, and the
    parameters match a one-device run."""
    import socket

    import jax
    import numpy as np

    import nux_eqx as nux

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false"
    env["JAX_PLATFORMS"] = "cpu"
    one = dict(env, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOST, str(i), port, str(tmp_path)], env=env, stderr=subprocess.PIPE
        )
        for i in (0, 1)
    ]
    ref = subprocess.run(
        [sys.executable, "-c", HOST, "-1", port, str(tmp_path)], env=one, capture_output=True
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    want = np.load(tmp_path / "params-1.npz")
    for pid in (0, 1):
        got = np.load(tmp_path / f"params{pid}.npz")
        for k in want.files:
            np.testing.assert_allclose(got[k], want[k], atol=1e-4)
    assert (tmp_path / "run0" / "flow.eqx").exists() and not (tmp_path / "run1").exists()
    saved = nux.load(tmp_path / "run0" / "flow.eqx", nux.RealNVP(4, (32, 32)))
    first = jax.tree.leaves(nux.trainable(saved)[0])[0]
    np.testing.assert_allclose(np.asarray(first), want[want.files[0]], atol=1e-4)
