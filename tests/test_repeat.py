"""`Repeat(block, n)`: the scan-over-layers container."""

import copy

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx.testing import scramble

SMALL = dict(hidden_layer_sizes=(8,))


def vector_block():
    return nux.Sequential(nux.ActNorm(), nux.Coupling(**SMALL), nux.Reverse())


def image_block():
    return nux.Sequential(
        nux.ActNorm(),
        nux.OneByOneConv(),
        nux.Coupling(n_channels=8, mask="checkerboard", parity=0),
        nux.Coupling(n_channels=8, mask="checkerboard", parity=1),
    )


def _pair(block, n, x, scale=0.3, **kw):
    """An initialised, scrambled Repeat and the unrolled Sequential of its n blocks."""
    rep = nux.init(nux.Repeat(block, n, **kw), x, key=jr.key(1))
    seq = nux.init(nux.Sequential(*[block] * n), x, key=jr.key(1))
    # init unrolls the blocks with Sequential's keys: the same parameters.
    for a, b in zip(rep.blocks(), seq.layers):
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(u, v)
    rep = scramble(rep, jr.key(2), scale)
    seq = eqx.tree_at(lambda s: s.layers, seq, rep.blocks())
    return rep, seq


@pytest.mark.parametrize(
    ("make", "shape", "n"),
    [(vector_block, (5,), 4), (image_block, (4, 4, 2), 3)],
    ids=["vector", "image"],
)
def test_repeat_equals_unrolled_sequential(make, shape, n):
    x = jr.normal(jr.key(0), (8, *shape))
    # scramble by 0.1 (check_flow's scale): larger scrambles give |z| ~ 100 and float32
    # round-off of that size in both containers.
    rep, seq = _pair(make(), n, x, scale=0.1)
    z_r, c_r = jax.vmap(rep)(x)
    z_s, c_s = jax.vmap(seq)(x)
    np.testing.assert_allclose(z_r, z_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c_r, c_s, rtol=1e-5, atol=1e-5)
    assert not np.allclose(z_r, x)  # the blocks do something
    x_r, cr_r = jax.vmap(lambda v: rep(v, reverse=True))(z_r)
    x_s, cr_s = jax.vmap(lambda v: seq(v, reverse=True))(z_r)
    np.testing.assert_allclose(x_r, x_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cr_r, cr_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_r, x, rtol=1e-4, atol=1e-4)


def test_reverse_runs_blocks_in_reverse_order():
    """Non-commuting blocks: running the reverse scan forwards would not invert."""
    x = jr.normal(jr.key(0), (8, 5))
    rep, _ = _pair(vector_block(), 3, x)
    z, _ = jax.vmap(rep)(x)
    wrong = z
    for b in rep.blocks():  # the inverse blocks, in the wrong (forward) order
        wrong = jax.vmap(lambda v, b=b: b(v, reverse=True)[0])(wrong)
    assert not np.allclose(wrong, x, atol=1e-3)
    np.testing.assert_allclose(jax.vmap(lambda v: rep(v, reverse=True)[0])(z), x, rtol=1e-4, atol=1e-4)


def test_keys_are_split_per_block_like_sequential():
    x = jnp.floor(jr.uniform(jr.key(0), (8, 3)) * 5)
    block = nux.Sequential(nux.UniformDequantization(scale=5.0), nux.Scale(0.2))
    rep = nux.init(nux.Repeat(block, 3), x, key=jr.key(1))
    seq = nux.init(nux.Sequential(*[block] * 3), x, key=jr.key(1))
    keys = jr.split(jr.key(4), 8)
    z_r, c_r = jax.vmap(lambda v, k: rep(v, key=k))(x, keys)
    z_s, c_s = jax.vmap(lambda v, k: seq(v, key=k))(x, keys)
    np.testing.assert_allclose(z_r, z_s, rtol=1e-6)
    np.testing.assert_allclose(c_r, c_s, rtol=1e-6)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        rep(x[0])


@pytest.mark.parametrize("unroll", [2, True])
def test_unroll_gives_the_same_result(unroll):
    x = jr.normal(jr.key(0), (8, 5))
    rep, seq = _pair(vector_block(), 3, x, unroll=unroll)
    np.testing.assert_allclose(jax.vmap(rep)(x)[1], jax.vmap(seq)(x)[1], rtol=1e-5, atol=1e-5)


def test_data_dependent_init_sees_previous_block_output():
    x = 3.0 + 2.0 * jr.normal(jr.key(0), (64, 4))
    rep = nux.init(nux.Repeat(nux.Sequential(nux.ActNorm(), nux.Scale(0.5)), 3), x, key=jr.key(1))
    b = [blk.layers[0].b for blk in rep.blocks()]
    # block 0 centres the data; later blocks see centred data
    assert np.all(np.abs(np.asarray(b[0]) - 3.0) < 1.0)
    assert np.all(np.abs(np.asarray(b[1])) < 1e-4)
    assert rep.block.layers[0].b.shape == (3, 4)  # stacked


def test_sample_through_repeat():
    x = jr.normal(jr.key(0), (16, 5))
    flow_r = nux.init(
        nux.Sequential(nux.Repeat(vector_block(), 3), nux.UnitGaussianPrior()), x, key=jr.key(3)
    )
    flow_r = scramble(flow_r, jr.key(4), 0.3)
    flow_s = nux.init(
        nux.Sequential(nux.Sequential(*[vector_block()] * 3), nux.UnitGaussianPrior()), x, key=jr.key(3)
    )
    flow_s = eqx.tree_at(lambda f: f.layers[0].layers, flow_s, flow_r.layers[0].blocks())
    keys = jr.split(jr.key(5), 6)
    xs, lq = jax.vmap(lambda k: nux.sample(flow_r, k, temperature=0.7))(keys)
    xs2, lq2 = jax.vmap(lambda k: nux.sample(flow_s, k, temperature=0.7))(keys)
    assert xs.shape == (6, 5)
    np.testing.assert_allclose(xs, xs2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lq, lq2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lq, jax.vmap(lambda v: nux.log_prob(flow_r, v))(xs), rtol=1e-4, atol=1e-4)


def test_repeat_of_a_sampling_block_samples_like_sequential():
    x = jr.normal(jr.key(0), (16, 4))
    block = nux.Sequential(nux.Coupling(**SMALL), nux.Reverse(), nux.UnitGaussianPrior())
    rep, seq = _pair(block, 2, x)
    assert rep.can_sample()
    assert not nux.Repeat(vector_block(), 2).can_sample()
    keys = jr.split(jr.key(5), 4)
    xs, lq = jax.vmap(lambda k: nux.sample(rep, k))(keys)
    xs2, lq2 = jax.vmap(lambda k: nux.sample(seq, k))(keys)
    np.testing.assert_allclose(xs, xs2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lq, lq2, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="cannot start a sample"):
        nux.sample(nux.init(nux.Repeat(vector_block(), 2), x, key=jr.key(0)), jr.key(0))


def test_capture_and_children_see_unstacked_blocks():
    x = jr.normal(jr.key(0), (8, 5))
    rep, _ = _pair(vector_block(), 3, x)
    names = [name for name, _ in rep.children()]
    assert names == ["blocks[0]", "blocks[1]", "blocks[2]"]
    for _, b in rep.children():
        assert b.is_initialised and b.layers[0].b.shape == (5,)
    z, c, rec = nux.capture(rep, x[0])
    assert list(rec) == [f"blocks[{i}].layers[{j}]" for i in range(3) for j in range(3)]
    np.testing.assert_allclose(rec["blocks[2].layers[2]"].z, z, rtol=1e-6)
    np.testing.assert_allclose(sum(r.contribution for r in rec.values()), c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c, rep(x[0])[1], rtol=1e-5, atol=1e-5)
    # capture under jit and vmap (the blocks hold no leaked tracers)
    zs, cs, recs = eqx.filter_jit(jax.vmap(lambda v: nux.capture(rep, v)))(x)
    np.testing.assert_allclose(
        recs["blocks[1].layers[1]"].x,
        jax.vmap(lambda v: nux.capture(rep, v)[2]["blocks[1].layers[1]"].x)(x),
        rtol=1e-5,
    )
    # before init the children are the template
    template = vector_block()
    assert all(b is template for _, b in nux.Repeat(template, 2).children())


def test_plain_jit_grad_and_eval_shape_init(tmp_path):
    x = jr.normal(jr.key(0), (8, 4, 4, 2))
    rep = nux.init(nux.Repeat(image_block(), 2), x, key=jr.key(1))
    params, static = nux.trainable(rep)

    @jax.jit
    def loss(p, v):
        f = eqx.combine(p, static)
        return -jnp.mean(jax.vmap(lambda u: f(u)[1] - 0.5 * jnp.sum(f(u)[0] ** 2))(v))

    g = jax.grad(loss)(params, x)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(g))
    skel = eqx.filter_eval_shape(nux.init, nux.Repeat(image_block(), 2), x, key=jr.key(1))
    assert jax.tree.structure(skel) == jax.tree.structure(rep)
    nux.save(tmp_path / "rep.eqx", rep)
    loaded = nux.load(tmp_path / "rep.eqx", nux.Repeat(image_block(), 2))
    np.testing.assert_array_equal(jax.vmap(loaded)(x)[0], jax.vmap(rep)(x)[0])


def test_reinit_of_an_initialised_repeat():
    x = jr.normal(jr.key(0), (8, 5))
    rep = nux.init(nux.Repeat(vector_block(), 2), x, key=jr.key(1))
    again = nux.init(rep, 2 * x, key=jr.key(1))
    assert again.block.layers[0].b.shape == (2, 5)


class _RandomStatic(nux.AbstractBijection):
    """A test layer whose init sets a static field from a random draw."""

    tag: int | None = eqx.field(static=True, default=None)

    def init(self, x_batch, *, key, cond=None):
        new = copy.copy(self)
        object.__setattr__(new, "tag", int(jr.randint(key, (), 0, 1_000_000)))
        return new

    def transform(self, x, reverse, *, key, cond):
        return x, jnp.zeros((), x.dtype)


def test_errors():
    x = jr.normal(jr.key(0), (8, 4, 4, 2))
    with pytest.raises(ValueError, match="positive int"):
        nux.Repeat(vector_block(), 0)
    with pytest.raises(TypeError, match="must be a flow"):
        nux.Repeat(nux.ActNorm, 2)
    with pytest.raises(ValueError, match="unroll"):
        nux.Repeat(vector_block(), 2, unroll=0)
    with pytest.raises(nux.ShapeError, match="preserves shape"):
        nux.init(nux.Repeat(nux.Squeeze(), 2), x, key=jr.key(0))
    with pytest.raises(ValueError, match="block 1 differs from block 0 in its static"):
        nux.init(nux.Repeat(_RandomStatic(), 2), x, key=jr.key(0))
    with pytest.raises(nux.NotInitialisedError, match="nux_eqx.init"):
        nux.Repeat(vector_block(), 2)(x[0])


def test_multiscale_glow_repeat_option():
    x = jnp.floor(jr.uniform(jr.key(0), (16, 8, 8, 1)) * 17)
    flow = nux.MultiscaleGlow(n_levels=2, n_blocks=3, n_channels=8, dequantize=17, repeat=True)
    flow = nux.init(flow, x, key=jr.key(1))
    reps = [
        f
        for f in jax.tree.leaves(flow, is_leaf=lambda v: isinstance(v, nux.Repeat))
        if isinstance(f, nux.Repeat)
    ]
    assert len(reps) == 2 and all(r.n == 3 for r in reps)
    lp = jax.vmap(lambda v, k: nux.log_prob(flow, v, key=k))(x, jr.split(jr.key(2), 16))
    assert np.all(np.isfinite(lp))
    xs, lq = jax.vmap(lambda k: nux.sample(flow, k))(jr.split(jr.key(3), 2))
    assert xs.shape == (2, 8, 8, 1) and np.all(np.isfinite(lq))


def test_loop_body_convolution_is_the_same_convolution():
    """Inside `loop_body` (Repeat's scan) `nn.Conv2d` is an im2col matmul on CPU: same
    values, same gradients, and forward-mode autodiff still works."""
    import equinox as eqx
    import numpy as np

    for k in (1, 3, (3, 1)):
        conv = nux.nn.Conv2d(3, 5, k, key=jr.key(0))
        x = jr.normal(jr.key(1), (4, 6, 3))

        def f(c, v):
            return jnp.sum(jnp.sin(c(v)))

        with nux.nn.loop_body():
            y_loop = conv(x)
            g_loop = eqx.filter_grad(f)(conv, x)
            j_loop = jax.jvp(conv, (x,), (jnp.ones_like(x),))[1]
        y, g = conv(x), eqx.filter_grad(f)(conv, x)
        j = jax.jvp(conv, (x,), (jnp.ones_like(x),))[1]
        np.testing.assert_allclose(y_loop, y, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(g_loop.weight, g.weight, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(j_loop, j, rtol=1e-5, atol=1e-5)
    if jax.default_backend() == "cpu":  # the im2col form is what runs in the loop
        with nux.nn.loop_body():
            jaxpr = str(jax.make_jaxpr(conv)(x))
        assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr
    assert "conv_general_dilated" in str(jax.make_jaxpr(conv)(x))


def test_permute_from_key_gives_each_block_its_own_permutation():
    """`Permute(seed=None)` draws its permutation from the init key: stacked in a Repeat,
    every block gets its own (never the identity), the leaf is an integer array that
    training leaves alone, and reverse inverts it."""
    x = jr.normal(jr.key(0), (16, 5))
    block = nux.Sequential(nux.Coupling(**SMALL), nux.Permute(seed=None))
    flow = nux.init(nux.Repeat(block, 4), x, key=jr.key(1))
    perms = np.asarray(flow.block.layers[1].perm)
    assert perms.shape == (4, 5) and perms.dtype == np.int32
    assert len({tuple(p) for p in perms}) > 1
    for p in perms:
        assert sorted(p) == list(range(5)) and list(p) != list(range(5))
    assert not any(np.issubdtype(a.dtype, np.integer) for a in jax.tree.leaves(nux.trainable(flow)[0]))
    one = nux.init(nux.Permute(seed=None), x, key=jr.key(2))
    z, c = one(x[0])
    np.testing.assert_array_equal(z, x[0][np.asarray(one.perm)])
    np.testing.assert_array_equal(one(z, reverse=True)[0], x[0])
    with pytest.raises(TypeError, match="int or None"):
        nux.Permute(seed=1.5)


@pytest.mark.parametrize("build", [nux.RealNVP, nux.NeuralSplineFlow])
def test_ready_models_scan_and_unrolled_layout(build):
    """The ready coupling models scan one block by default; `scan=False` is the unrolled
    0.1 layout with the same layer types per block."""
    x = jr.normal(jr.key(0), (32, 5))
    scanned = nux.init(build(3, (8,)), x, key=jr.key(1))
    unrolled = nux.init(build(3, (8,), scan=False), x, key=jr.key(1))
    assert isinstance(scanned.layers[0], nux.Repeat) and scanned.layers[0].n == 3
    types = [type(f).__name__ for f in unrolled.layers[:-1]]
    assert types == [type(f).__name__ for f in scanned.layers[0].block.layers] * 3
    assert jnp.isfinite(jax.vmap(nux.log_prob, in_axes=(None, 0))(scanned, x)).all()
    with pytest.raises(TypeError, match="scan must be True or False"):
        build(2, (8,), scan="yes")


def test_realnvp_scale_option():
    """RealNVP's affine couplings use NuX's tanh scale unless told otherwise; an additive
    RealNVP has no scale to set."""
    x = jr.normal(jr.key(0), (32, 5))
    default = nux.init(nux.RealNVP(2, (8,)), x, key=jr.key(1))
    assert default.layers[0].block.layers[1].transformer.scale == "tanh"
    isp = nux.init(nux.RealNVP(2, (8,), scale="inverse_softplus", scan=False), x, key=jr.key(1))
    assert isp.layers[1].transformer.scale == "inverse_softplus"
    with pytest.raises(ValueError, match="scale is for affine couplings"):
        nux.RealNVP(kind="additive", scale="inverse_softplus")


@pytest.mark.parametrize("build", [nux.RealNVP, nux.NeuralSplineFlow])
def test_vector_models_split_option(build):
    """An odd-sized vector is split ceil(d/2) transformed by default and floor(d/2) with
    `split="floor"` (0.1's layout); the scanned and unrolled forms agree on it."""
    x = jr.normal(jr.key(0), (32, 5))
    for scan in (True, False):
        for split, n_out in (("ceil", 3), ("floor", 2)):
            flow = nux.init(build(2, (8,), scan=scan, split=split), x, key=jr.key(1))
            coupling = (flow.layers[0].block if scan else flow).layers[1]
            assert coupling.split == split
            assert coupling._split_shapes((5,))[1] == (n_out,)
            assert bool(jnp.isfinite(nux.log_prob(flow, x[0])))
    with pytest.raises(ValueError, match=f"{build.__name__}: split must be"):
        build(split="half")


@pytest.mark.parametrize("d", range(1, 41))
def test_roll_shift_transforms_every_feature_equally_often(d):
    """`roll_shift(d)` is coprime with `d` and near `d / 2`; a half-mask coupling that
    transforms the first `ceil(d/2)` positions, rolled by it `d` times, transforms every
    feature exactly `ceil(d/2)` times (random permutations give no such guarantee)."""
    import math

    from nux_eqx.bijective import roll_shift

    k = roll_shift(d)
    if d < 2:
        assert k == 0
        return
    assert 0 < k < d and math.gcd(k, d) == 1
    assert abs(2 * k - d) <= min(abs(2 * j - d) for j in range(1, d) if math.gcd(j, d) == 1)
    x = jnp.arange(d, dtype=jnp.float32)[None]
    roll = nux.init(nux.Roll(), x, key=jr.key(0))
    order, counts = x[0], np.zeros(d, int)
    for _ in range(d):
        counts[np.asarray(order[: (d + 1) // 2]).astype(int)] += 1
        order = roll(order)[0]
    assert (counts == (d + 1) // 2).all(), counts


def test_roll_values_reverse_and_errors():
    """`Roll()` is `jnp.roll(x, -shift)` on the last axis (images: the channels); reverse
    undoes it; an explicit shift of any sign is taken modulo the size; it holds no leaves."""
    x = jr.normal(jr.key(0), (4, 7))
    roll = nux.init(nux.Roll(), x, key=jr.key(1))
    z, c = roll(x[0])
    np.testing.assert_array_equal(z, jnp.concatenate([x[0, 4:], x[0, :4]]))
    assert c == 0 and not jax.tree.leaves(roll)
    np.testing.assert_array_equal(roll(z, reverse=True)[0], x[0])
    for shift in (-3, 4, 11):
        r = nux.init(nux.Roll(shift), x, key=jr.key(1))
        np.testing.assert_array_equal(r(x[0])[0], jnp.roll(x[0], -shift))
    img = jr.normal(jr.key(2), (2, 3, 3, 6))
    r = nux.init(nux.Roll(), img, key=jr.key(1))
    np.testing.assert_array_equal(r(img[0])[0], jnp.roll(img[0], -5, axis=-1))
    with pytest.raises(TypeError, match="int or None"):
        nux.Roll(1.5)


@pytest.mark.parametrize("build", [nux.RealNVP, nux.NeuralSplineFlow])
def test_vector_models_permutation_option(build):
    """RealNVP puts `Roll()` between couplings by default, NeuralSplineFlow a random
    permutation (`Permute(seed=None)` scanned, `Permute(seed=i)` unrolled); each takes the
    other, and a wrong name says what is accepted."""
    x = jr.normal(jr.key(0), (32, 7))
    default = "roll" if build is nux.RealNVP else "random"
    other = "random" if default == "roll" else "roll"
    for perm in (default, other):
        kw = {} if perm == default else {"permutation": perm}
        flow = nux.init(build(2, (8,), **kw), x, key=jr.key(1))
        unrolled = build(2, (8,), scan=False, **kw)
        mixers = [f for f in unrolled.layers if isinstance(f, (nux.Roll, nux.Permute))]
        if perm == "roll":
            assert isinstance(flow.layers[0].block.layers[-1], nux.Roll)
            assert [type(f) for f in mixers] == [nux.Roll] * 2
        else:
            assert flow.layers[0].block.layers[-1].perm.shape == (2, 7)
            assert [f.seed for f in mixers] == [0, 1]
    with pytest.raises(ValueError, match="'roll' or 'random' or 'reverse'"):
        build(2, (8,), permutation="cyclic")


def test_checkpoint_with_random_permutations_names_the_option(tmp_path):
    """A checkpoint written with random permutations (RealNVP's earlier default) loads by
    itself and into `permutation="random"`; into the default, the error names that option
    (and `permutation='roll'` for a Roll checkpoint loaded into a random-permutation flow)."""
    x = jr.normal(jr.key(0), (32, 5))
    old = nux.init(nux.RealNVP(2, (8,), permutation="random"), x, key=jr.key(1))
    nux.save(tmp_path / "f.eqx", old)
    with pytest.raises(nux.CheckpointError, match="permutation='random'"):
        nux.load(tmp_path / "f.eqx", nux.RealNVP(2, (8,)))
    lp = jax.vmap(nux.log_prob, in_axes=(None, 0))
    for got in (
        nux.load(tmp_path / "f.eqx"),
        nux.load(tmp_path / "f.eqx", nux.RealNVP(2, (8,), permutation="random")),
    ):
        np.testing.assert_allclose(lp(got, x), lp(old, x))
    rolled = nux.init(nux.NeuralSplineFlow(2, (8,), permutation="roll"), x, key=jr.key(1))
    nux.save(tmp_path / "g.eqx", rolled)
    with pytest.raises(nux.CheckpointError, match="permutation='roll'"):
        nux.load(tmp_path / "g.eqx", nux.NeuralSplineFlow(2, (8,)))
