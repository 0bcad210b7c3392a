"""Coupling masks (half / channel / checkerboard), transformers (the user's own included)
and optional conditioning (`ConditionedCoupling`)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx.testing import scramble

SMALL = dict(hidden_layer_sizes=(8,))


def _image(key=jr.key(0), shape=(4, 4, 2), n=8):
    return jr.normal(key, (n, *shape))


def _init_scrambled(flow, x, cond=None):
    flow = nux.init(flow, x, key=jr.key(1), cond=cond)
    return scramble(flow, jr.key(2), 0.5)


def _board(h, w, parity):
    i, j = np.indices((h, w))
    return ((i + j + parity) % 2 == 0)[..., None]


# ---- constructor and shape validation ----------------------------------------------------


@pytest.mark.parametrize("cls", [nux.Coupling, nux.ConditionedCoupling])
def test_bad_arguments(cls):
    with pytest.raises(ValueError, match="mask must be one of"):
        cls(mask="stripes")
    with pytest.raises(ValueError, match="parity must be 0 or 1"):
        cls(mask="checkerboard", parity=2)
    with pytest.raises(ValueError, match="only applies to mask='checkerboard'"):
        cls(parity=1)
    with pytest.raises(ValueError, match="kind must be"):
        cls(kind="spline")


def test_checkerboard_on_vector_is_rejected():
    with pytest.raises(nux.ShapeError, match=r"checkerboard.*\(h, w, c\) images.*mask='half'"):
        nux.init(nux.Coupling(mask="checkerboard", **SMALL), jnp.zeros((4, 6)), key=jr.key(0))
    with pytest.raises(nux.ShapeError, match="checkerboard"):
        nux.init(
            nux.ConditionedCoupling(mask="checkerboard", **SMALL),
            jnp.zeros((4, 6)),
            key=jr.key(0),
            cond=jnp.zeros((4, 2)),
        )
    with pytest.raises(nux.ShapeError, match="at least 2 pixels"):
        nux.init(nux.Coupling(mask="checkerboard", n_channels=4), jnp.zeros((4, 1, 1, 3)), key=jr.key(0))


def test_one_channel_needs_checkerboard():
    x = _image(shape=(4, 4, 1))
    with pytest.raises(nux.ShapeError, match="mask='checkerboard'"):
        nux.init(nux.Coupling(n_channels=4), x, key=jr.key(0))
    flow = nux.init(nux.Coupling(n_channels=4, mask="checkerboard"), x, key=jr.key(0))
    assert flow(x[0])[0].shape == (4, 4, 1)


# ---- the masks ---------------------------------------------------------------------------


def test_default_mask_is_half_and_channel_is_the_same():
    assert nux.Coupling().mask == "half"
    x = _image()
    half = _init_scrambled(nux.Coupling(n_channels=8), x)
    chan = eqx.tree_at(
        lambda c: c.network,
        nux.init(nux.Coupling(n_channels=8, mask="channel"), x, key=jr.key(1)),
        half.network,
    )
    z_h, c_h = jax.vmap(half)(x)
    z_c, c_c = jax.vmap(chan)(x)
    np.testing.assert_allclose(z_c, z_h, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(c_c, c_h, rtol=1e-6, atol=1e-6)
    # half: the second half of the channels is untouched, the first is not.
    np.testing.assert_array_equal(z_h[..., 1:], x[..., 1:])
    assert not np.allclose(z_h[..., :1], x[..., :1])


@pytest.mark.parametrize("kind", ["affine", "additive"])
@pytest.mark.parametrize("parity", [0, 1])
def test_checkerboard_transforms_only_masked_pixels(kind, parity):
    x = _image(shape=(4, 6, 2))
    flow = _init_scrambled(nux.Coupling(kind=kind, n_channels=8, mask="checkerboard", parity=parity), x)
    z, c = jax.vmap(flow)(x)
    m = np.broadcast_to(_board(4, 6, parity), x.shape[1:])
    np.testing.assert_array_equal(np.asarray(z)[:, ~m], np.asarray(x)[:, ~m])
    assert np.all(np.abs(np.asarray(z - x)[:, m]) > 0)
    xr, cr = jax.vmap(lambda v: flow(v, reverse=True))(z)
    np.testing.assert_allclose(xr, x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cr, c, rtol=1e-5, atol=1e-5)
    if kind == "additive":
        np.testing.assert_array_equal(c, 0.0)


def test_checkerboard_network_sees_only_untouched_entries():
    """Changing the transformed pixels leaves t and log_s (hence the contribution and the
    affine map's scale) unchanged: z moves by delta * exp(-log_s) there, by 0 elsewhere."""
    x = _image(shape=(4, 4, 3))[0]
    flow = _init_scrambled(nux.Coupling(n_channels=8, mask="checkerboard"), x[None].repeat(4, 0))
    m = jnp.asarray(np.broadcast_to(_board(4, 4, 0), x.shape), x.dtype)
    delta = jr.normal(jr.key(5), x.shape) * m
    z1, c1 = flow(x)
    z2, c2 = flow(x + delta)
    np.testing.assert_allclose(c2, c1, rtol=1e-6)
    ratio1 = (z2 - z1) / jnp.where(m > 0, delta, 1.0)
    # the per-entry scale exp(-log_s) is the same for both inputs, and log_s != 0
    assert np.all(np.asarray(ratio1)[np.asarray(m) > 0] > 0)
    np.testing.assert_array_equal(np.asarray(z2 - z1)[np.asarray(m) == 0], 0.0)
    # the contribution is -sum(log_s) over the masked entries only: compare with the
    # Jacobian's diagonal, which is exp(-log_s) on masked entries and 1 elsewhere.
    jac = jax.jacobian(lambda v: flow(v.reshape(x.shape))[0].reshape(-1))(x.reshape(-1))
    np.testing.assert_allclose(c1, jnp.sum(jnp.log(jnp.diag(jac))), rtol=1e-5)


def test_checkerboard_parities_are_complementary():
    x = _image(shape=(4, 4, 1))
    f0 = _init_scrambled(nux.Coupling(n_channels=8, mask="checkerboard", parity=0), x)
    f1 = _init_scrambled(nux.Coupling(n_channels=8, mask="checkerboard", parity=1), x)
    changed0 = np.asarray(jax.vmap(f0)(x)[0] != x).any(0)
    changed1 = np.asarray(jax.vmap(f1)(x)[0] != x).any(0)
    assert not (changed0 & changed1).any()
    assert (changed0 | changed1).all()


def test_custom_factory_gets_the_documented_shapes():
    seen = []

    def factory(in_shape, out_shape, *, key):
        seen.append((in_shape, out_shape))
        return nux.nn.ConvNet(in_shape[-1], out_shape[-1], 4, key=key)

    x = _image(shape=(4, 4, 3))
    nux.init(nux.Coupling(network_factory=factory, mask="checkerboard"), x, key=jr.key(0))
    # the channel split of 3 channels: ceil(3/2) = 2 changed by default, 1 with "floor"
    nux.init(nux.Coupling(kind="additive", network_factory=factory), x, key=jr.key(0))
    nux.init(nux.Coupling(kind="additive", network_factory=factory, split="floor"), x, key=jr.key(0))
    nux.init(
        nux.ConditionedCoupling(network_factory=factory, mask="checkerboard"),
        x,
        key=jr.key(0),
        cond=jnp.zeros((8, 5)),
    )
    assert seen == [
        ((4, 4, 3), (4, 4, 6)),
        ((4, 4, 1), (4, 4, 2)),
        ((4, 4, 2), (4, 4, 1)),
        ((4, 4, 8), (4, 4, 6)),
    ]


def test_plain_jit_works_with_masks():
    x = _image()
    flow = _init_scrambled(nux.Coupling(n_channels=8, mask="checkerboard", parity=1), x)
    z, c = jax.jit(jax.vmap(lambda f, v: f(v), in_axes=(None, 0)))(flow, x)
    z2, c2 = jax.vmap(flow)(x)
    np.testing.assert_allclose(z, z2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, c2, rtol=1e-5, atol=1e-6)


# ---- ConditionedCoupling -----------------------------------------------------------------


def test_conditioned_coupling_uses_cond():
    x = jr.normal(jr.key(0), (8, 4))
    cond = jr.normal(jr.key(1), (8, 3))
    flow = _init_scrambled(nux.ConditionedCoupling(**SMALL), x, cond)
    assert flow.cond_spec.shapes == ((3,),)
    z1, c1 = jax.vmap(flow)(x, cond=cond)
    z2, c2 = jax.vmap(flow)(x, cond=cond + 1.0)
    assert not np.allclose(z1, z2)
    assert not np.allclose(c1, c2)
    np.testing.assert_array_equal(z1[:, 2:], x[:, 2:])
    xr, cr = jax.vmap(lambda v, c: flow(v, reverse=True, cond=c))(z1, cond)
    np.testing.assert_allclose(xr, x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cr, c1, rtol=1e-5, atol=1e-5)


def test_conditioned_coupling_image_pytree_cond():
    x = _image()
    cond = {"map": jr.normal(jr.key(3), (8, 4, 4, 1)), "vec": jr.normal(jr.key(4), (8, 2))}
    flow = _init_scrambled(nux.ConditionedCoupling(n_channels=8, mask="checkerboard"), x, cond)
    z, _ = jax.vmap(flow)(x, cond=cond)
    cond2 = {"map": cond["map"], "vec": cond["vec"] + 1.0}
    z2, _ = jax.vmap(flow)(x, cond=cond2)
    assert not np.allclose(z, z2)


def test_conditioned_coupling_errors():
    x = jr.normal(jr.key(0), (8, 4))
    cond = jr.normal(jr.key(1), (8, 3))
    with pytest.raises(ValueError, match="is conditional: pass the batched conditioning"):
        nux.init(nux.ConditionedCoupling(**SMALL), x, key=jr.key(0))
    flow = nux.init(nux.ConditionedCoupling(**SMALL), x, key=jr.key(0), cond=cond)
    with pytest.raises(ValueError, match="Coupling is conditional and needs `cond=`"):
        flow(x[0])
    with pytest.raises(
        nux.ShapeError, match=r"initialised with cond leaves of shapes \(\(3,\),\).*got \(\(4,\),\)"
    ):
        flow(x[0], cond=jnp.zeros(4))
    with pytest.raises(nux.ShapeError, match="initialised with cond leaves"):
        flow(x[0], cond=cond)  # a batch of conds for one example
    with pytest.raises(nux.ShapeError, match="initialised with cond leaves"):
        eqx.filter_jit(lambda f, v, c: f(v, cond=c))(flow, x[0], (jnp.zeros(3), jnp.zeros(1)))


def test_conditioned_coupling_in_chain_rule():
    """The second flow of a ChainRule can be a conditional coupling reading x_a."""
    x = jr.normal(jr.key(0), (8, 6))
    flow = nux.Sequential(
        nux.ChainRule(
            nux.UnitGaussianPrior(),
            nux.Sequential(nux.ConditionedCoupling(**SMALL), nux.UnitGaussianPrior()),
        )
    )
    flow = _init_scrambled(flow, x)
    lp = jax.vmap(lambda v: nux.log_prob(flow, v))(x)
    assert np.all(np.isfinite(lp))
    xs, lq = jax.vmap(lambda k: nux.sample(flow, k))(jr.split(jr.key(7), 4))
    np.testing.assert_allclose(lq, jax.vmap(lambda v: nux.log_prob(flow, v))(xs), rtol=1e-4, atol=1e-4)


def test_conditioned_coupling_checkpoint_skeleton(tmp_path):
    x = _image()
    cond = jr.normal(jr.key(1), (8, 3))
    flow = _init_scrambled(nux.ConditionedCoupling(n_channels=8, mask="checkerboard"), x, cond)
    nux.save(tmp_path / "cc.eqx", flow)
    loaded = nux.load(
        tmp_path / "cc.eqx",
        nux.ConditionedCoupling(n_channels=8, mask="checkerboard"),
        cond_like=jax.ShapeDtypeStruct((1, 3), jnp.float32),
    )
    assert loaded.cond_spec.shapes == ((3,),)
    np.testing.assert_array_equal(jax.vmap(loaded)(x, cond=cond)[0], jax.vmap(flow)(x, cond=cond)[0])


# ---- transformers and optional conditioning ---------------------------------------------


class SinhArcsinh(nux.AbstractBijection):
    """A user's elementwise layer, written as in the custom-layers tutorial."""

    a: jax.Array | None = None
    log_b: jax.Array | None = None

    def init(self, x_batch, *, key, cond=None):
        shape = x_batch.shape[1:]
        new = (jnp.zeros(shape, x_batch.dtype), jnp.full(shape, 0.1, x_batch.dtype))
        return eqx.tree_at(lambda s: (s.a, s.log_b), self, new, is_leaf=lambda v: v is None)

    def transform(self, x, reverse, *, key, cond):
        b = jnp.exp(self.log_b)
        if reverse:  # x is the latent side here: invert, then score at the data-side point
            x = out = jnp.sinh((jnp.arcsinh(x) + self.a) / b)
        else:
            out = jnp.sinh(b * jnp.arcsinh(x) - self.a)
        log_det = self.log_b + jnp.log(jnp.cosh(b * jnp.arcsinh(x) - self.a)) - 0.5 * jnp.log1p(x * x)
        return out, jnp.sum(log_det)


@pytest.mark.parametrize("conditional", [False, True], ids=["plain", "cond"])
@pytest.mark.parametrize("make", [nux.Coupling, nux.MaskedAutoregressive], ids=lambda c: c.__name__)
def test_user_transformer(make, conditional):
    """A user's elementwise layer plugs in with no other code, with and without cond; the
    network outputs its 2 parameters per feature, starting at the layer's own init."""
    from nux_eqx.testing import check_flow

    x = jr.normal(jr.key(0), (8, 4))
    cond = jr.normal(jr.key(1), (8, 3)) if conditional else None
    layer = make(SinhArcsinh(), hidden_layer_sizes=(8,))
    check_flow(layer, x, key=jr.key(2), cond_batch=cond)
    flow = nux.init(layer, x, key=jr.key(3), cond=cond)
    if make is nux.Coupling:
        last = lambda f: (f.network.layers[-1].weight, f.network.layers[-1].bias)  # noqa: E731
    else:
        last = lambda f: (f.made.weights[-1], f.made.biases[-1])  # noqa: E731
    assert last(flow)[1].shape == ((2 * 2,) if make is nux.Coupling else (2 * 4,))
    # zero the network's last layer: the layer is the transformer at its init (log_b = 0.1)
    zeroed = eqx.tree_at(last, flow, tuple(jnp.zeros_like(a) for a in last(flow)))
    alone = nux.init(SinhArcsinh(), x, key=jr.key(0))
    c0 = None if cond is None else cond[0]
    z, ld = zeroed(x[0], cond=c0)
    n = 2 if make is nux.Coupling else 4
    z_ref, ld_ref = jax.vmap(alone)(x)
    np.testing.assert_allclose(z[:n], z_ref[0, :n], rtol=1e-5, atol=1e-6)
    if conditional:  # (scrambled: a MADE's output layer starts at zero)
        f = scramble(flow, jr.key(4), 0.5)
        z2, _ = jax.vmap(lambda v, c: f(v, cond=c))(x, cond + 1.0)
        assert not np.allclose(z2, jax.vmap(lambda v, c: f(v, cond=c))(x, cond)[0])


def test_cond_structure_is_checked_not_only_leaf_shapes():
    """Issue 16: a dict with the leaf shapes of the array the layer was initialised with is refused."""
    x = jr.normal(jr.key(0), (8, 4))
    for layer in (nux.Coupling(**SMALL), nux.MAF(hidden_layer_sizes=(8,))):
        flow = nux.init(layer, x, key=jr.key(0), cond=jnp.zeros((8, 3)))
        with pytest.raises(
            nux.ShapeError, match=r"structure PyTreeDef\(\*\).*structure PyTreeDef\(\{'c': \*\}\)"
        ):
            flow(x[0], cond={"c": jnp.zeros(3)})
        flow(x[0], cond=jnp.zeros(3))


def test_conditioning_is_optional():
    x = jr.normal(jr.key(0), (8, 4))
    plain = nux.init(nux.Coupling(**SMALL), x, key=jr.key(0))
    assert plain.cond_spec is None
    with pytest.raises(nux.ShapeError, match="initialised without `cond`.*conditional=False"):
        plain(x[0], cond=jnp.zeros(3))
    ignoring = nux.init(nux.Coupling(conditional=False, **SMALL), x, key=jr.key(0), cond=jnp.zeros((8, 3)))
    assert ignoring.cond_spec is None and ignoring.network.layers[0].weight.shape == (8, 2)
    np.testing.assert_array_equal(ignoring(x[0], cond=jnp.zeros(3))[0], ignoring(x[0])[0])
    with pytest.raises(ValueError, match="conditional must be"):
        nux.Coupling(conditional="yes")
    with pytest.raises(TypeError, match="elementwise bijective layer"):
        nux.Coupling(nux.UnitGaussianPrior())
    with pytest.raises(ValueError, match="un-initialised"):
        nux.Coupling(nux.init(nux.Shift(), x, key=jr.key(0)))
    with pytest.raises(ValueError, match="either kind='additive' or transformer="):
        nux.Coupling(nux.Shift(), kind="additive")


def test_repr_shows_only_the_network_settings_that_apply():
    """Issue 16: an image coupling's repr does not show the MLP's hidden_layer_sizes."""
    img = nux.init(nux.Coupling(n_channels=4), _image(), key=jr.key(0))
    vec = nux.init(nux.Coupling(**SMALL), jr.normal(jr.key(0), (8, 4)), key=jr.key(0))
    assert "hidden_layer_sizes" not in repr(img) and "n_channels=4" in repr(img)
    assert "n_channels" not in repr(vec) and "hidden_layer_sizes=(8,)" in repr(vec)
