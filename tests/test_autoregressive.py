"""Masked autoregressive flows: triangular Jacobians in every ordering, the scan inverse,
IAF as `Invert(MAF)`, conditioning, static orderings and masks, configuration errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx.bijective import made_masks, made_ordering
from nux_eqx.testing import scramble

D = 6
H = (16, 16)
ORDERINGS = ["sequential", "reversed", "random", (2, 0, 5, 1, 4, 3)]


def _x(n=4, d=D):
    return jr.normal(jr.key(0), (n, d))


def _cond(n=4):
    return jr.normal(jr.key(5), (n, 3))


@eqx.filter_jit
def _init(flow, x, cond):
    return nux.init(flow, x, key=jr.key(1), cond=cond)


@eqx.filter_jit
def _jacobian(flow, x, cond):
    return jax.jacobian(lambda v: flow(v, cond=cond)[0])(x)


@eqx.filter_jit
def _call(flow, x, cond=None):
    return flow(x, cond=cond)


@eqx.filter_jit
def _both_ways(flow, x, cond):
    cax = None if cond is None else 0
    z, c = jax.vmap(lambda v, k: flow(v, cond=k), in_axes=(0, cax))(x, cond)
    xr, cr = jax.vmap(lambda v, k: flow(v, True, cond=k), in_axes=(0, cax))(z, cond)
    return z, c, xr, cr


def _made(cls, ordering, **kw):
    if cls in (nux.MaskedAutoregressiveSpline, nux.ConditionalMaskedAutoregressiveSpline):
        kw.setdefault("K", 4)
    return cls(hidden_layer_sizes=H, ordering=ordering, seed=7, **kw)


LAYERS = [
    nux.MAF,
    nux.ConditionalMAF,
    nux.MaskedAutoregressiveSpline,
    nux.ConditionalMaskedAutoregressiveSpline,
]


def _is_conditional(cls):
    return cls.__name__.startswith("Conditional")


# Every ordering for MAF; one non-trivial ordering each for the others (same MADE code).
TRIANGULAR = [(nux.MAF, o) for o in ORDERINGS] + [
    (nux.ConditionalMAF, "random"),
    (nux.MaskedAutoregressiveSpline, "reversed"),
    (nux.ConditionalMaskedAutoregressiveSpline, (2, 0, 5, 1, 4, 3)),
]


@pytest.mark.parametrize("cls,ordering", TRIANGULAR, ids=lambda v: v.__name__ if callable(v) else str(v))
def test_jacobian_is_triangular_in_the_ordering(cls, ordering):
    # Inside [-B, B]: in the identity tails a spline does not depend on earlier features.
    x = jnp.clip(1.5 * _x(), -2.5, 2.5)
    cond = _cond() if _is_conditional(cls) else None
    # tanh hidden units: no dead ReLU paths, so every allowed dependency is non-zero.
    flow = scramble(_init(_made(cls, ordering, activation=jnp.tanh), x, cond), jr.key(2), scale=0.5)
    order = list(made_ordering(ordering, D, 7))
    assert sorted(order) == list(range(D))
    for i in range(2):
        c = None if cond is None else cond[i]
        J = np.asarray(_jacobian(flow, x[i], c))
        P = J[np.ix_(order, order)]  # rows and columns in generation order
        # z[order[k]] depends on x[order[j]] for j <= k only: lower-triangular, exactly.
        np.testing.assert_array_equal(np.triu(P, 1), 0.0)
        assert np.all(np.diag(P) != 0)
        # ... and with hidden widths >= D - 1 on every earlier feature.
        assert np.all(P[np.tril_indices(D, -1)] != 0)
        # The contribution is log|det J| = sum log|diag|.
        _, c_val = flow(x[i], cond=c)
        np.testing.assert_allclose(c_val, np.sum(np.log(np.abs(np.diag(P)))), rtol=1e-4, atol=1e-4)


F32, F64 = ("float32", 0.1, 1e-5), ("float64", 0.5, 1e-10)


@pytest.mark.parametrize(
    "cls,dtype,scale,tol",
    [
        (nux.MAF, *F32),
        (nux.MaskedAutoregressiveSpline, *F32),
        (nux.MaskedAutoregressiveSpline, *F64),
        (nux.ConditionalMAF, *F64),
        (nux.ConditionalMaskedAutoregressiveSpline, *F32),
    ],
    ids=lambda v: v.__name__ if callable(v) else str(v),
)
def test_scan_inverse_round_trips(cls, dtype, scale, tol):
    # Strongly scrambled splines are ill-conditioned in float32 (steep bins amplify the
    # rounding of earlier features); float64 shows the inverse itself is exact.
    with jax.enable_x64(dtype == "float64"):
        x = (1.5 * jr.normal(jr.key(3), (5, 9))).astype(dtype)
        cond = None if not _is_conditional(cls) else _cond(5).astype(dtype)
        flow = scramble(_init(_made(cls, "random"), x, cond), jr.key(4), scale=scale)
        z, c, xr, cr = _both_ways(flow, x, cond)
        assert xr.dtype == jnp.dtype(dtype)
        assert not np.allclose(z, x)
        np.testing.assert_allclose(xr, x, rtol=tol, atol=tol)
        np.testing.assert_allclose(cr, c, rtol=tol, atol=tol)


def test_iaf_is_invert_maf():
    x = _x()
    maf = scramble(_init(nux.MAF(H, "random", seed=1), x, None), jr.key(2))
    iaf = nux.init(nux.Invert(maf), x, key=jr.key(0))
    assert iaf.flow is maf or eqx.tree_equal(iaf.flow, maf)
    z_iaf, c_iaf, x_iaf, c_iaf_r = _both_ways(iaf, x, None)
    x_maf, c_maf = jax.vmap(lambda v: maf(v, True))(x)
    # IAF forward is MAF's sampling direction, with the contribution negated.
    np.testing.assert_allclose(z_iaf, x_maf, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(c_iaf, -c_maf, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(x_iaf, x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c_iaf_r, c_iaf, rtol=1e-5, atol=1e-5)
    assert "Invert(MAF(...))" in nux.MAF.__doc__


def test_affine_transformer_is_bounded_tanh():
    # Huge raw log-scales still scale by at most e per feature.
    x = _x()
    flow = _init(nux.MAF(H), x, None)
    flow = eqx.tree_at(lambda f: f.made.biases[-1], flow, jnp.full_like(flow.made.biases[-1], 100.0))
    z, c = flow(x[0])
    np.testing.assert_allclose(c, -D * 1.0, rtol=1e-6)  # alpha = tanh(100) = 1 for every feature
    np.testing.assert_allclose(z, (x[0] - 100.0) * np.exp(-1.0), rtol=1e-5)


def test_starts_at_the_identity():
    x = _x()
    for flow in (
        _init(nux.MAF(H), x, None),
        _init(nux.MaskedAutoregressiveSpline(K=5, hidden_layer_sizes=H), x, None),
    ):
        z, c, _, _ = _both_ways(flow, x, None)
        np.testing.assert_allclose(z, x, atol=1e-6)
        np.testing.assert_allclose(c, 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "cls", [nux.ConditionalMAF, nux.ConditionalMaskedAutoregressiveSpline], ids=lambda c: c.__name__
)
def test_conditioning(cls):
    x, cond = _x(), _cond()
    flow = scramble(_init(_made(cls, "sequential"), x, cond), jr.key(3))
    z1, c1 = _call(flow, x[0], cond[0])
    z2, c2 = _call(flow, x[0], cond[1])
    assert not np.allclose(z1, z2) and not np.allclose(c1, c2)
    # Every output, the first feature's (no earlier features) included, depends on cond
    # (at some example of the batch: a ReLU unit can be inactive at one point).
    J = eqx.filter_jit(jax.vmap(lambda xi, ci: jax.jacobian(lambda c: flow(xi, cond=c)[0])(ci)))(x, cond)
    assert np.all(np.any(np.asarray(J) != 0, axis=0))
    # cond is required at init and at every call, with the recorded structure.
    with pytest.raises(ValueError, match="conditional"):
        nux.init(_made(cls, "sequential"), x, key=jr.key(0))
    with pytest.raises(ValueError, match="needs `cond=`"):
        flow(x[0])
    with pytest.raises(nux.ShapeError, match="initialised with cond leaves"):
        flow(x[0], cond=jnp.zeros((4,)))
    assert flow.made.cond_weight.shape == (H[0], 3)


def test_conditioning_is_optional():
    """A MAF reads `cond` when `init` is given one; built with `conditional=False` it
    ignores it; initialised without one, it refuses one."""
    x, cond = _x(), _cond()
    flow = scramble(_init(nux.MAF(H), x, cond), jr.key(3))
    assert flow.made.cond_weight.shape == (H[0], 3)
    assert not np.allclose(_call(flow, x[0], cond[0])[0], _call(flow, x[0], cond[1])[0])
    ignoring = scramble(_init(nux.MaskedAutoregressive(None, H, conditional=False), x, cond), jr.key(3))
    assert ignoring.made.cond_weight is None
    np.testing.assert_array_equal(ignoring(x[0], cond=cond[0])[0], ignoring(x[0])[0])
    plain = _init(nux.MAF(H), x, None)
    with pytest.raises(nux.ShapeError, match="initialised without `cond`"):
        plain(x[0], cond=cond[0])


def test_orderings_and_masks_are_static():
    x = _x()
    a = _init(nux.MAF(H, "random", seed=11), x, None)
    b = _init(nux.MAF(H, "random", seed=11), x, None)
    c = _init(nux.MAF(H, "random", seed=12), x, None)
    assert a.made.order == b.made.order != c.made.order
    assert a.made.order == made_ordering("random", D, 11)
    assert made_ordering("sequential", D) == tuple(range(D))
    assert made_ordering("reversed", D) == tuple(range(D - 1, -1, -1))
    # Only the weights and biases are leaves: no ordering or mask among them.
    n_leaves = len(jax.tree.leaves(a))
    assert n_leaves == 2 * (len(H) + 1)
    for leaf in jax.tree.leaves(a):
        assert jnp.issubdtype(leaf.dtype, jnp.floating)
    # Masked-out weights are stored as zeros; the masks are read-only numpy constants.
    for w, m in zip(a.made.weights, made_masks(a.made.order, H, 2)):
        np.testing.assert_array_equal(np.asarray(w)[m == 0], 0.0)
        assert not m.flags.writeable
    # The ordering does not depend on the init key, so init is traceable (checkpoint skeleton).
    skeleton = eqx.filter_eval_shape(nux.init, nux.MAF(H, "random", seed=11), x, key=jr.key(9))
    assert skeleton.made.order == a.made.order
    # Plain jax.jit works: every non-array field is static.
    z = jax.jit(lambda f, v: f(v)[0])(a, x[0])
    np.testing.assert_allclose(z, a(x[0])[0], rtol=1e-6)


@pytest.mark.parametrize("conditional", [False, True])
def test_made_masks_give_autoregressive_connectivity(conditional):
    order = (3, 1, 0, 2)
    masks = made_masks(order, (5, 7), 3, conditional)
    conn = masks[0]
    for m in masks[1:]:
        conn = (m @ conn > 0).astype(np.float32)
    rank = np.argsort(order)
    for p in range(3):
        for i in range(4):
            for j in range(4):
                reach = conn[p * 4 + i, j] > 0
                assert reach == (rank[j] < rank[i])
    # The conditioning enters every unit of the first hidden layer, unmasked. With
    # `conditional` some of them see no feature, and every output (the first feature's
    # too) is reachable from them; without, the first feature's outputs are constants.
    cond_only = masks[0].sum(axis=1) == 0
    assert cond_only.any() == conditional
    reach = cond_only.astype(np.float32)[:, None]
    for m in masks[1:]:
        reach = (m @ reach > 0).astype(np.float32)
    assert np.all(reach > 0) == conditional


def test_one_dimensional_and_no_hidden_layers():
    x = jr.normal(jr.key(0), (4, 1))
    flow = scramble(_init(nux.MAF(hidden_layer_sizes=()), x, None), jr.key(1))
    assert flow.made.weights == (None,)
    z, c, xr, _ = _both_ways(flow, x, None)
    np.testing.assert_allclose(xr, x, rtol=1e-6, atol=1e-6)
    cond = _cond()
    flow = scramble(_init(nux.ConditionalMAF(hidden_layer_sizes=(8,)), x, cond), jr.key(1))
    z1, _ = flow(x[0], cond=cond[0])
    z2, _ = flow(x[0], cond=cond[1])
    assert not np.allclose(z1, z2)


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_invalid_configurations_are_rejected(cls):
    with pytest.raises(ValueError, match="ordering must be"):
        cls(ordering="shuffled")
    with pytest.raises(ValueError, match="not a permutation"):
        cls(ordering=(0, 0, 1))
    with pytest.raises(ValueError, match="hidden_layer_sizes must be positive"):
        cls(hidden_layer_sizes=(16, 0))
    with pytest.raises(ValueError, match="seed must be an int"):
        cls(ordering="random", seed=0.5)
    cond = _cond(3)
    with pytest.raises(nux.ShapeError, match=r"takes vectors \(d,\)"):
        nux.init(cls(hidden_layer_sizes=(4,)), jnp.zeros((3, 2, 2)), key=jr.key(0), cond=cond)
    with pytest.raises(nux.ShapeError, match=r"not a permutation of range\(5\)"):
        nux.init(
            cls(hidden_layer_sizes=(4,), ordering=(1, 0, 2)), jnp.zeros((3, 5)), key=jr.key(0), cond=cond
        )


def test_made_units_are_initialised_for_the_inputs_they_see():
    """A unit that its mask lets see `k` inputs draws its weights on `±1/sqrt(k)`, not on
    `±1/sqrt(width)`: drawn for the full width and then masked, the units of the first
    features in the ordering would start with a small fraction of the signal."""
    d, hidden = 63, (128, 128)
    made = nux.nn.MADE(tuple(range(d)), 2, hidden, zero_init=False, key=jr.key(0))
    masks = made_masks(made.order, hidden, 2)
    for w, m in zip(made.weights, masks):
        w, seen = np.asarray(w), m.sum(axis=1)
        rows = seen > 0
        assert np.all(np.abs(w[rows]).max(axis=1) <= 1.0 / np.sqrt(seen[rows]) * (1 + 1e-6))
        # uniform on ±1/sqrt(k): a unit's summed squared weights average 1/3, whatever k;
        # drawn for the full width n and masked they would average k / (3 n)
        few = rows & (seen <= m.shape[1] // 8)
        assert few.sum() > 5
        assert 0.6 < 3 * np.mean(np.sum(w[few] ** 2, axis=1)) < 1.4
    # with conditioning the first layer's units also count the conditioning features
    cmade = nux.nn.MADE((0, 1, 2), 2, (8,), cond_size=5, key=jr.key(1))
    seen = made_masks((0, 1, 2), (8,), 2, True)[0].sum(axis=1) + 5
    both = np.concatenate([np.abs(np.asarray(cmade.weights[0])), np.abs(np.asarray(cmade.cond_weight))], 1)
    assert np.all(both.max(axis=1) <= 1.0 / np.sqrt(seen) * (1 + 1e-6))


def test_maf_model_orders_its_first_layer_as_the_data():
    """`MaskedAutoregressiveFlow` generates the features in the data's order in its first
    layer and in seeded random orders after it; `ordering="random"` is the earlier layout."""
    x = _x(16)

    def orders(flow):
        flow = nux.init(flow, x, key=jr.key(0))
        return [f.made.order for f in flow.layers if isinstance(f, nux.MaskedAutoregressive)]

    new = orders(nux.MaskedAutoregressiveFlow(3, (16,), seed=7))
    old = orders(nux.MaskedAutoregressiveFlow(3, (16,), seed=7, ordering="random"))
    assert new[0] == tuple(range(D)) != old[0]
    assert new[1:] == old[1:] == [made_ordering("random", D, 7 + i) for i in (1, 2)]
    assert old[0] == made_ordering("random", D, 7)
    with pytest.raises(ValueError, match="ordering must be 'data_first' or 'random'"):
        nux.MaskedAutoregressiveFlow(ordering="sequential")
