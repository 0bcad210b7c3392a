"""Coupling masks (half / channel / checkerboard) and `ConditionedCoupling`."""

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
    nux.init(nux.Coupling(kind="additive", network_factory=factory), x, key=jr.key(0))
    nux.init(
        nux.ConditionedCoupling(network_factory=factory, mask="checkerboard"),
        x,
        key=jr.key(0),
        cond=jnp.zeros((8, 5)),
    )
    assert seen == [((4, 4, 3), (4, 4, 6)), ((4, 4, 2), (4, 4, 1)), ((4, 4, 8), (4, 4, 6))]


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
    assert flow.cond_shape == ((3,),)
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
    with pytest.raises(ValueError, match="ConditionedCoupling is conditional and needs `cond=`"):
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
    assert loaded.cond_shape == ((3,),)
    np.testing.assert_array_equal(jax.vmap(loaded)(x, cond=cond)[0], jax.vmap(flow)(x, cond=cond)[0])
