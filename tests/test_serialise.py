import equinox as eqx
import jax
import jax.random as jr
import pytest

import nux_eqx as nux


def make():
    return nux.Sequential(nux.ActNorm(), nux.Coupling(hidden_layer_sizes=(8,)), nux.UnitGaussianPrior())


@pytest.fixture
def flow():
    return nux.init(make(), jr.normal(jr.key(0), (16, 3)), key=jr.key(1))


def test_roundtrip_into_initialised_and_uninitialised(tmp_path, flow):
    path = tmp_path / "flow.eqx"
    nux.save(path, flow)
    a = nux.load(path, flow)
    b = nux.load(path, make())  # no data needed: the input shape is in the checkpoint
    for loaded in (a, b):
        assert bool(eqx.tree_equal(loaded, flow))
        assert loaded.in_shape == (3,)


def test_other_architecture_is_a_clear_error(tmp_path, flow):
    path = tmp_path / "flow.eqx"
    nux.save(path, flow)
    other = nux.Sequential(nux.ActNorm(), nux.Coupling(hidden_layer_sizes=(9,)), nux.UnitGaussianPrior())
    # (the coupling's network sizes live in its factory: the first differing array names it)
    with pytest.raises(nux.CheckpointError, match=r"different flow: .*\.layers\[1\]\.network"):
        nux.load(path, other)
    with pytest.raises(nux.CheckpointError, match="different flow"):
        nux.load(path, nux.Sequential(nux.ActNorm(), nux.UnitGaussianPrior()))


def test_truncated_and_foreign_files(tmp_path, flow):
    path = tmp_path / "flow.eqx"
    nux.save(path, flow)
    data = path.read_bytes()
    (tmp_path / "cut.eqx").write_bytes(data[: len(data) - 40])
    with pytest.raises(nux.CheckpointError, match="truncated or corrupt"):
        nux.load(tmp_path / "cut.eqx", flow)
    (tmp_path / "junk.eqx").write_bytes(b"\x00\x01garbage")
    with pytest.raises(nux.CheckpointError, match="not a nux_eqx checkpoint"):
        nux.load(tmp_path / "junk.eqx", flow)


def test_save_is_atomic(tmp_path, flow, monkeypatch):
    path = tmp_path / "flow.eqx"
    nux.save(path, flow)
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(eqx, "tree_serialise_leaves", boom)
    with pytest.raises(RuntimeError):
        nux.save(path, jax.tree.map(lambda v: v + 1 if eqx.is_inexact_array(v) else v, flow))
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["flow.eqx"]  # no temporary left behind


def test_refuses_uninitialised(tmp_path):
    with pytest.raises(nux.CheckpointError, match="not initialised"):
        nux.save(tmp_path / "x.eqx", make())


# ---- checkpoints written before the transformer redesign (issue 17) -------------------
# tests/data/coupling_ar_v1_*.eqx were written by tests/data/make_coupling_ar_checkpoint.py
# with the classes of that time (Coupling, ConditionedCoupling, NeuralSpline, MAF, ...).


def test_checkpoints_from_before_the_transformer_redesign_load(tmp_path):
    import json
    import pathlib
    import sys

    import jax.numpy as jnp

    here = pathlib.Path(__file__).parent / "data"
    sys.path.insert(0, str(here))
    import make_coupling_ar_checkpoint as old

    expected = json.loads((here / "coupling_ar_v1.json").read_text())
    vec, cond, img = old.flows()
    # Coupling is now conditional whenever `init` gets a cond; the plain couplings of that
    # conditional image flow read none, which is spelt `conditional=False` today.
    img = nux.Sequential(
        nux.Coupling(n_channels=4, conditional=False),
        nux.Coupling(n_channels=4, mask="checkerboard", parity=1, conditional=False),
        nux.NeuralSpline(K=3, n_channels=4, conditional=False),
        nux.ConditionedCoupling(n_channels=4, mask="checkerboard"),
        nux.UnitGaussianPrior(),
    )
    _, _, c, _ = old.data()
    with pytest.raises(nux.CheckpointError, match="different flow"):
        nux.load(here / "coupling_ar_v1_vec.eqx", vec)  # the header names the old classes
    load_v1 = nux.bijective.load_v1
    vec = load_v1(here / "coupling_ar_v1_vec.eqx", vec)
    cond = load_v1(here / "coupling_ar_v1_cond.eqx", cond, cond_like=c[:1])
    img = load_v1(here / "coupling_ar_v1_img.eqx", img, cond_like=c[:1])
    got = old.log_probs(vec, cond, img)
    for name, g in zip(("vec", "cond", "img"), got):
        assert jnp.allclose(g, jnp.asarray(expected[name]), atol=1e-4, rtol=1e-5), name


def _as_format_2(path):
    """Rewrite a checkpoint's header as nux_eqx wrote it before format 3: no `split`
    field in couplings, no transformer settings in the layers' descriptions."""
    import json

    raw = path.read_bytes()
    newline = raw.index(b"\n")
    header = json.loads(raw[:newline])
    stripped = []

    def strip(node):
        if isinstance(node, dict):
            if "Coupling" in str(node.get("module", "")):
                stripped.append(node["fields"].pop("split"))
            for v in node.values():
                strip(v)
        elif isinstance(node, list):
            for v in node:
                strip(v)

    strip(header["tree"])
    for _, _, config in header["layers"]:
        config.pop("split", None)
        config.pop("transformer", None)
    header["version"] = 2
    path.write_bytes(json.dumps(header).encode() + raw[newline:])
    return stripped


def test_checkpoint_written_before_coupling_split_loads_with_its_floor_split(tmp_path):
    """Couplings on odd sizes transform ceil(d/2) features since `split` was added; a
    checkpoint written before it (no `split` in its stored configuration) was a
    floor(d/2) coupling and must load as one, not with the new default."""
    import jax.numpy as jnp

    x = jr.normal(jr.key(0), (16, 3))
    old = nux.init(
        nux.Sequential(nux.Coupling(hidden_layer_sizes=(8,), split="floor"), nux.UnitGaussianPrior()),
        x,
        key=jr.key(1),
    )
    path = tmp_path / "old.eqx"
    nux.save(path, old)
    assert _as_format_2(path) == ["floor"]
    loaded = nux.load(path)
    assert loaded.layers[0].split == "floor"
    lp = jax.vmap(nux.log_prob, in_axes=(None, 0))
    assert jnp.allclose(lp(loaded, x), lp(old, x))
    # into a flow built with today's default split: a clear error, not a silent load
    with pytest.raises(nux.CheckpointError, match="different flow"):
        nux.load(path, nux.Sequential(nux.Coupling(hidden_layer_sizes=(8,)), nux.UnitGaussianPrior()))
    again = nux.load(
        path, nux.Sequential(nux.Coupling(hidden_layer_sizes=(8,), split="floor"), nux.UnitGaussianPrior())
    )
    assert jnp.allclose(lp(again, x), lp(old, x))


def test_maf_checkpoint_of_the_old_tanh_default_never_loads_into_the_new_default(tmp_path):
    """MaskedAutoregressiveFlow's affine scale changed ('tanh' -> 'inverse_softplus'); the
    arrays are the same shapes, so only the recorded settings can tell an old checkpoint
    from a new flow: loading one into the other must fail, and each loads into its own."""
    import jax.numpy as jnp

    x = jr.normal(jr.key(0), (32, 3))
    old = nux.init(nux.MaskedAutoregressiveFlow(2, (16,), scale="tanh"), x, key=jr.key(1))
    lp = jax.vmap(nux.log_prob, in_axes=(None, 0))
    for fmt in (3, 2):
        path = tmp_path / f"maf{fmt}.eqx"
        nux.save(path, old)
        if fmt == 2:
            _as_format_2(path)
        with pytest.raises(nux.CheckpointError, match="different flow|inverse_softplus"):
            nux.load(path, nux.MaskedAutoregressiveFlow(2, (16,)))
        for got in (nux.load(path), nux.load(path, nux.MaskedAutoregressiveFlow(2, (16,), scale="tanh"))):
            assert jnp.allclose(lp(got, x), lp(old, x))


@pytest.mark.parametrize("written", ["random", "data_first"])
def test_maf_checkpoint_of_either_ordering_names_the_option(tmp_path, written):
    """MaskedAutoregressiveFlow's first layer follows the data's order by default (before:
    a random order). A checkpoint of either layout loads by itself and into a flow built
    with its `ordering`; into the other, the error names the option to pass."""
    import jax.numpy as jnp

    x = jr.normal(jr.key(0), (32, 3))
    other = "data_first" if written == "random" else "random"
    flow = nux.init(nux.MaskedAutoregressiveFlow(2, (16,), ordering=written), x, key=jr.key(1))
    path = tmp_path / "maf.eqx"
    nux.save(path, flow)
    with pytest.raises(nux.CheckpointError, match=f"ordering='{written}'"):
        nux.load(path, nux.MaskedAutoregressiveFlow(2, (16,), ordering=other))
    lp = jax.vmap(nux.log_prob, in_axes=(None, 0))
    for got in (nux.load(path), nux.load(path, nux.MaskedAutoregressiveFlow(2, (16,), ordering=written))):
        assert jnp.allclose(lp(got, x), lp(flow, x))


def test_unrolled_ready_model_checkpoint_loads_with_scan_false_and_says_so(tmp_path):
    """RealNVP and NeuralSplineFlow scan their layers by default after 0.1 (one `Repeat`);
    a checkpoint of the unrolled layout loads by itself or into `scan=False`, and into the
    scanned default it is refused with a message that names `scan=False`."""
    import jax.numpy as jnp

    x = jr.normal(jr.key(0), (32, 4))
    lp = jax.vmap(nux.log_prob, in_axes=(None, 0))
    for build in (nux.RealNVP, nux.NeuralSplineFlow):
        old = nux.init(build(2, (8,), scan=False), x, key=jr.key(1))
        path = tmp_path / f"{build.__name__}.eqx"
        nux.save(path, old)
        with pytest.raises(nux.CheckpointError, match="scan=False"):
            nux.load(path, build(2, (8,)))
        for got in (nux.load(path), nux.load(path, build(2, (8,), scan=False))):
            assert jnp.allclose(lp(got, x), lp(old, x))
        new = nux.init(build(2, (8,)), x, key=jr.key(1))
        nux.save(path, new)
        assert jnp.allclose(lp(nux.load(path, build(2, (8,))), x), lp(new, x))
