"""`nux_eqx.load(path)` without a skeleton, and `nux_eqx.load_run(run_dir)`.

The checkpoint stores the flow's configuration (every module's class and field values,
arrays as shapes); `load(path)` rebuilds the flow from it. The mechanism is generic (read
from the dataclass fields), so every registered layer must round-trip.
"""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest
from cases import all_cases, data_of
from jaxtyping import Array, Float

import nux_eqx as nux
from nux_eqx._serialise import decode_tree, describe, encode_tree

CASES = all_cases()


def _strip_config(path):
    """Rewrite a checkpoint as an older nux_eqx wrote it: no stored configuration."""
    data = path.read_bytes()
    line, rest = data.split(b"\n", 1)
    header = json.loads(line)
    header.pop("tree")
    path.write_bytes(json.dumps(header).encode() + b"\n" + rest)


def _same_arrays(a, b) -> bool:
    la, lb = jax.tree.leaves(eqx.filter(a, eqx.is_array)), jax.tree.leaves(eqx.filter(b, eqx.is_array))
    return len(la) == len(lb) and all(bool(jnp.array_equal(u, v)) for u, v in zip(la, lb))


def test_every_registered_layer_round_trips_its_configuration():
    """Structure only (eval_shape): the rebuilt tree has the same treedef and leaves."""
    failures = []
    for name, case in CASES.items():
        x = jax.eval_shape(lambda k, c=case: data_of(c, k), jr.key(0))
        c = jax.eval_shape(case.cond, jr.key(1)) if case.cond else None
        flow = eqx.filter_eval_shape(lambda f, x, c: nux.init(f, x, key=jr.key(0), cond=c), case.make(), x, c)
        tree, why = encode_tree(flow)
        if tree is None:
            failures.append(f"{name}: not stored ({why})")
            continue
        rebuilt = decode_tree(json.loads(json.dumps(tree)))
        if jax.tree.structure(rebuilt) != jax.tree.structure(flow) or describe(rebuilt) != describe(flow):
            failures.append(f"{name}: rebuilt with another structure")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: nux.MaskedAutoregressiveFlow(2, (8,)), (3,)),
        (
            lambda: nux.Sequential(
                nux.ActNorm(), nux.Coupling(hidden_layer_sizes=(8,)), nux.Reverse(), nux.GMMPrior(n_classes=3)
            ),
            (4,),
        ),
    ],
    ids=["MAF", "Sequential"],
)
def test_load_without_skeleton(tmp_path, make, shape):
    x = jr.normal(jr.key(0), (16, *shape))
    flow = nux.init(make(), x, key=jr.key(1))
    path = tmp_path / "flow.eqx"
    nux.save(path, flow)
    loaded = nux.load(path)
    assert type(loaded) is type(flow)
    assert bool(eqx.tree_equal(loaded, flow))  # same structure and arrays: same log_prob


def test_old_checkpoint_needs_a_skeleton(tmp_path):
    make = lambda: nux.RealNVP(2, (8,))
    flow = nux.init(make(), jr.normal(jr.key(0), (16, 2)), key=jr.key(1))
    path = tmp_path / "old.eqx"
    nux.save(path, flow)
    _strip_config(path)
    assert _same_arrays(nux.load(path, make()), flow)  # the skeleton form still works
    with pytest.raises(
        nux.CheckpointError, match=r"does not store its flow's configuration.*load\(path, like\)"
    ):
        nux.load(path)


class _MyShift(nux.AbstractBijection):
    """A custom layer outside the library: stored, but not imported by `load(path)`."""

    b: jax.Array = eqx.field(default_factory=lambda: jnp.zeros(()))

    def transform(
        self, x: Float[Array, " d"], reverse: bool, *, key, cond
    ) -> tuple[Float[Array, " d"], Float[Array, ""]]:
        return (x - self.b if reverse else x + self.b), jnp.zeros(())


def test_custom_layer_loads_with_a_skeleton_only(tmp_path):
    make = lambda: nux.Sequential(_MyShift(), nux.UnitGaussianPrior())
    flow = nux.init(make(), jr.normal(jr.key(0), (4, 2)), key=jr.key(1))
    path = tmp_path / "custom.eqx"
    nux.save(path, flow)
    with pytest.raises(nux.CheckpointError, match=r"_MyShift.*load\(path, like\)"):
        nux.load(path)
    assert _same_arrays(nux.load(path, make()), flow)


def test_unstorable_configuration_says_why(tmp_path):
    flow = nux.init(
        nux.Sequential(nux.Coupling(hidden_layer_sizes=(4,)), nux.UnitGaussianPrior()),
        jr.normal(jr.key(0), (4, 2)),
        key=jr.key(1),
    )
    flow = eqx.tree_at(lambda f: f.layers[1], flow, _Holder(lambda v: v))
    path = tmp_path / "lambda.eqx"
    nux.save(path, flow)  # saving still works
    with pytest.raises(nux.CheckpointError, match="lambda"):
        nux.load(path)


class _Holder(eqx.Module):
    fn: object


def test_load_run_of_fit_and_of_an_older_cli_run(tmp_path):
    x = nux.data.toy_sample("8gaussians", 256, seed=0)
    flow, _ = nux.train.fit(
        nux.RealNVP(2, (8,)),
        x,
        key=jr.key(0),
        steps=4,
        batch_size=64,
        valid=x[:64],
        eval_every=2,
        checkpoint_dir=tmp_path / "ckpt",
        progress=False,
    )
    assert bool(eqx.tree_equal(nux.load_run(tmp_path / "ckpt"), flow))
    # interrupted before the end: only the training checkpoint; its best flow is returned
    (tmp_path / "ckpt" / "flow.eqx").unlink()
    assert nux.load_run(tmp_path / "ckpt").in_shape == (2,)

    # a `nux-eqx train` run folder written before the configuration was stored
    from nux_eqx.cli import MODELS

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(
        json.dumps(
            {"data": "8gaussians", "model": "maf", "seed": 0, "resolved": {"shape": [2], "levels": None}}
        )
    )
    made = MODELS["maf"].build(type("S", (), {"shape": (2,), "levels": None, "name": "8gaussians"}))
    trained = nux.init(made, x, key=jr.key(2))
    nux.save(run / "checkpoints" / "flow.eqx", trained)
    _strip_config(run / "checkpoints" / "flow.eqx")
    assert _same_arrays(nux.load_run(run), trained)
    with pytest.raises(nux.CheckpointError, match="holds no trained flow"):
        nux.load_run(tmp_path)
