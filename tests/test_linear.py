"""Dense linear and convolutional bijections against explicit dense-matrix references.

Every layer here is linear (affine), so its Jacobian IS its matrix: each test builds the
matrix from the layer's raw parameters in NumPy, independently of the layer's code, and
compares the forward map, the reverse map and the contribution with it, on scrambled
parameters (identity-at-init would hide wrong log-dets) in float64.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx.testing import check_flow, scramble


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


_init = eqx.filter_jit(nux.init)


def _np(a):
    return np.asarray(a, np.float64)


def _setup(layer, shape, seed=0, scale=0.3):
    """Initialise on a float64 batch, scramble the trainable parameters, return (flow, x)."""
    k1, k2, k3 = jr.split(jr.key(seed), 3)
    x = jr.normal(k1, (5, *shape), jnp.float64)
    flow = _init(layer, x, key=k2)
    return scramble(flow, k3, scale), x


@eqx.filter_jit
def _run(flow, x, reverse=False):
    return jax.vmap(lambda v: flow(v, reverse))(x)


@eqx.filter_jit
def _jacobian(flow, x0):
    return jax.jacobian(lambda v: flow(v.reshape(x0.shape))[0].reshape(-1))(x0.reshape(-1))


def _unit_lower(flat, n):
    L = np.eye(n)
    L[np.tril_indices(n, -1)] = _np(flat)
    return L


def _unit_upper(flat, n):
    U = np.eye(n)
    U[np.triu_indices(n, 1)] = _np(flat)
    return U


def _householder_product(vs):
    vs = _np(vs)
    Q = np.eye(vs.shape[1])
    for v in vs:  # Q = H(v_0) H(v_1) ... H(v_{n-1})
        Q = Q @ (np.eye(len(v)) - 2 * np.outer(v, v) / (v @ v))
    return Q


def _check_affine(flow, x, M, offset, contribution):
    """z = M x + offset on flattened examples; reverse by solve; contribution as given and
    equal to log|det M|; the Jacobian equals M."""
    n = x.shape[0]
    xf = _np(x).reshape(n, -1)
    z, c = _run(flow, x)
    np.testing.assert_allclose(_np(z).reshape(n, -1), xf @ M.T + offset, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(_np(c), contribution, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(contribution, np.linalg.slogdet(M)[1], rtol=1e-9, atol=1e-9)
    xr, cr = _run(flow, z, reverse=True)
    expected = np.linalg.solve(M, (_np(z).reshape(n, -1) - offset).T).T
    np.testing.assert_allclose(_np(xr).reshape(n, -1), expected, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(_np(xr), _np(x), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(_np(cr), _np(c), rtol=1e-12)
    J = _jacobian(flow, x[0])
    np.testing.assert_allclose(_np(J), M, rtol=1e-10, atol=1e-10)


# ---- vectors ---------------------------------------------------------------------------


def test_affine_dense():
    k1, k2 = jr.split(jr.key(1))
    x = jr.normal(k1, (5, 6), jnp.float64)
    flow0 = _init(nux.AffineDense(), x, key=k2)
    np.testing.assert_allclose(_np(flow0.W.T @ flow0.W), np.eye(6), atol=1e-12)  # starts orthogonal
    np.testing.assert_array_equal(_np(flow0.b), 0.0)
    flow, x = _setup(nux.AffineDense(), (6,))
    W, b = _np(flow.W), _np(flow.b)
    assert np.any(b != 0)
    _check_affine(flow, x, W, b, np.linalg.slogdet(W)[1])


def test_affine_ldu():
    flow, x = _setup(nux.AffineLDU(), (5,))
    assert flow.L.shape == flow.U.shape == (10,)
    L, U = _unit_lower(flow.L, 5), _unit_upper(flow.U, 5)
    M = L @ np.diag(np.exp(_np(flow.log_d))) @ U
    _check_affine(flow, x, M, 0.0, np.sum(_np(flow.log_d)))


@pytest.mark.parametrize("n", [1, 3, 7])
def test_affine_svd(n):
    flow, x = _setup(nux.AffineSVD(n_householders=n), (5,), seed=n)
    Uq, Vq = _householder_product(flow.U), _householder_product(flow.V)
    np.testing.assert_allclose(Uq.T @ Uq, np.eye(5), atol=1e-12)
    M = Uq @ np.diag(np.exp(_np(flow.log_s))) @ Vq.T
    _check_affine(flow, x, M, _np(flow.b), np.sum(_np(flow.log_s)))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_householder(n):
    flow, x = _setup(nux.Householder(n), (4,), seed=n)
    Q = _householder_product(flow.vectors)
    np.testing.assert_allclose(Q.T @ Q, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(Q), (-1.0) ** n, atol=1e-12)
    _check_affine(flow, x, Q, 0.0, 0.0)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2", None])
@pytest.mark.parametrize("cls", [nux.AffineSVD, nux.Householder])
def test_n_householders_rejected(cls, bad):
    with pytest.raises(ValueError, match=r"n_householders must be an integer >= 1"):
        cls(bad)


def test_affine_dispatch():
    assert type(nux.Affine()) is nux.AffineDense
    assert type(nux.Affine(mode="dense")) is nux.AffineDense
    assert type(nux.Affine(mode="LDU")) is nux.AffineLDU
    svd = nux.Affine(4, mode="SVD")
    assert type(svd) is nux.AffineSVD and svd.n_householders == 4
    assert type(nux.Affine(mode="svd", n_householders=2)) is nux.AffineSVD
    with pytest.raises(ValueError, match=r"mode must be one of 'dense', 'LDU' or 'SVD', got 'qr'"):
        nux.Affine(mode="qr")
    with pytest.raises(TypeError):
        nux.Affine(mode="SVD")  # AffineSVD needs n_householders
    with pytest.raises(TypeError):
        nux.Affine(3)  # AffineDense takes no arguments
    with pytest.raises(ValueError, match="n_householders"):
        nux.Affine(0, mode="SVD")


@pytest.mark.parametrize(
    "layer", [nux.AffineDense(), nux.AffineLDU(), nux.AffineSVD(2), nux.Householder()], ids=type
)
def test_vector_layers_reject_images(layer):
    with pytest.raises(nux.ShapeError, match=r"acts on vectors, got examples of shape \(4, 4, 2\).*Flatten"):
        nux.init(layer, jnp.zeros((3, 4, 4, 2)), key=jr.key(0))


# ---- images ----------------------------------------------------------------------------


def test_one_by_one_conv_ldu():
    flow, x = _setup(nux.OneByOneConvLDU(), (3, 4, 5))
    M = _unit_lower(flow.L, 5) @ np.diag(np.exp(_np(flow.log_d))) @ _unit_upper(flow.U, 5)
    big = np.kron(np.eye(12), M)  # the same channel matrix at each of the 3 * 4 pixels
    _check_affine(flow, x, big, 0.0, 12 * np.sum(_np(flow.log_d)))
    assert nux.OnebyOneConvLDU is nux.OneByOneConvLDU


def _lu_weight(flow):
    perm = np.asarray(flow.perm.value)
    c = len(perm)
    P = np.zeros((c, c))
    P[np.arange(c), perm] = 1.0
    L = _unit_lower(flow.L, c)
    U = _unit_upper(flow.U, c) - np.eye(c) + np.diag(_np(flow.sign.value) * np.exp(_np(flow.log_s)))
    return P, L @ U


def test_one_by_one_conv_lu():
    k1, k2 = jr.split(jr.key(2))
    x = jr.normal(k1, (5, 2, 3, 6), jnp.float64)
    flow0 = _init(nux.OneByOneConvLU(), x, key=k2)
    P0, LU0 = _lu_weight(flow0)
    W0 = P0 @ LU0
    np.testing.assert_allclose(W0.T @ W0, np.eye(6), atol=1e-12)  # starts as a rotation
    assert sorted(np.asarray(flow0.perm.value).tolist()) == list(range(6))
    assert set(np.asarray(flow0.sign.value).tolist()) <= {-1.0, 1.0}

    flow, x = _setup(nux.OneByOneConvLU(), (2, 3, 6), seed=2)
    P, LU = _lu_weight(flow)
    W = P @ LU
    np.testing.assert_allclose(_np(flow.weight()), W, rtol=1e-12, atol=1e-12)
    _check_affine(flow, x, np.kron(np.eye(6), W), 0.0, 6 * np.sum(_np(flow.log_s)))
    # the fixed parts are the ones init chose: scrambling does not touch them
    np.testing.assert_array_equal(np.asarray(flow.perm.value), np.asarray(flow0.perm.value))
    np.testing.assert_array_equal(_np(flow.sign.value), _np(flow0.sign.value))


def test_one_by_one_conv_lu_fixed_parts_are_not_trained():
    flow, x = _setup(nux.OneByOneConvLU(), (2, 2, 4), seed=3)
    params, _ = nux.trainable(flow)
    assert params.perm is None and params.sign is None
    for name in ("L", "U", "log_s"):
        assert getattr(params, name) is not None
    # gradients: zero through the NonTrainable sign, non-zero for the learned parts
    grads = eqx.filter_jit(
        eqx.filter_grad(lambda f: jnp.sum(_run(f, x)[1]) - 0.5 * jnp.sum(_run(f, x)[0] ** 2))
    )(flow)
    np.testing.assert_array_equal(_np(grads.sign.value), 0.0)
    for name in ("L", "U", "log_s"):
        assert np.any(_np(getattr(grads, name)) != 0)
    # an optimiser step on the trainable partition leaves P and sign unchanged
    updates = jax.tree.map(lambda g: -0.1 * g, nux.trainable(grads)[0])
    stepped = eqx.apply_updates(flow, updates)
    np.testing.assert_array_equal(np.asarray(stepped.perm.value), np.asarray(flow.perm.value))
    np.testing.assert_array_equal(_np(stepped.sign.value), _np(flow.sign.value))
    assert not np.allclose(_np(stepped.log_s), _np(flow.log_s))


def _local_dense_reference(x, W, kh, kw):
    h, w, c = x.shape
    z = np.zeros_like(x)
    for a in range(h // kh):
        for b in range(w // kw):
            idx = [(a * kh + i, b * kw + j, k) for i in range(kh) for j in range(kw) for k in range(c)]
            v = np.array([x[p] for p in idx])
            for p, val in zip(idx, W @ v):
                z[p] = val
    return z


def _dense_of(fn, shape):
    """The matrix of a linear map on arrays of `shape`, by applying it to basis arrays."""
    n = int(np.prod(shape))
    return np.stack([fn(np.eye(n)[i].reshape(shape)).reshape(-1) for i in range(n)], axis=1)


@pytest.mark.parametrize(("shape", "filt"), [((4, 4, 2), (2, 2)), ((4, 6, 1), (2, 3)), ((3, 2, 2), (1, 2))])
def test_local_dense(shape, filt):
    flow, x = _setup(nux.LocalDense(filt), shape)
    W = _np(flow.W)
    M = _dense_of(lambda e: _local_dense_reference(e, W, *filt), shape)
    n_patches = shape[0] * shape[1] // (filt[0] * filt[1])
    _check_affine(flow, x, M, 0.0, n_patches * np.linalg.slogdet(W)[1])


def test_local_dense_identity_init_and_squeeze_order():
    x = jr.normal(jr.key(4), (3, 4, 4, 2), jnp.float64)
    flow = _init(nux.LocalDense(init="identity"), x, key=jr.key(5))
    z, c = _run(flow, x)
    np.testing.assert_array_equal(_np(z), _np(x))
    np.testing.assert_array_equal(_np(c), 0.0)
    # with 2x2 patches, W acts on the channels of Squeeze's output
    flow = scramble(flow, jr.key(6), 0.3)
    sq = _init(nux.Squeeze(), x, key=jr.key(0))
    ref = jax.vmap(lambda v: sq(jnp.einsum("ij,hwj->hwi", flow.W, sq(v)[0]), True)[0])(x)
    np.testing.assert_allclose(_np(_run(flow, x)[0]), _np(ref), rtol=1e-12, atol=1e-12)


def test_local_dense_rejects_bad_configurations():
    with pytest.raises(nux.ShapeError, match=r"patch size \(3, 3\) .*must divide the image size \(4, 4\)"):
        nux.init(nux.LocalDense((3, 3)), jnp.zeros((2, 4, 4, 2)), key=jr.key(0))
    with pytest.raises(nux.ShapeError, match=r"takes \(h, w, c\) images"):
        nux.init(nux.LocalDense(), jnp.zeros((2, 4)), key=jr.key(0))
    for bad in [0, (2,), (2, 0), (2, 2, 2), (2.0, 2), "2"]:
        with pytest.raises(ValueError, match="filter_shape must be a pair of positive ints"):
            nux.LocalDense(bad)
    with pytest.raises(ValueError, match="init must be 'identity' or 'rotation'"):
        nux.LocalDense(init="zeros")
    assert nux.LocalDense(3).filter_shape == (3, 3)


def _circular_conv_reference(x, k):
    """z[p, q] = sum_{i, j} k[i, j] @ x[(p - i + kh // 2) % h, (q - j + kw // 2) % w]."""
    kh, kw = k.shape[:2]
    z = np.zeros_like(x)
    for i in range(kh):
        for j in range(kw):
            z += np.roll(x, (i - kh // 2, j - kw // 2), axis=(0, 1)) @ k[i, j].T
    return z


@pytest.mark.parametrize(
    ("shape", "filt"),
    [((4, 4, 2), (3, 3)), ((3, 5, 2), (2, 3)), ((5, 4, 3), (3, 1)), ((2, 3, 1), (2, 3)), ((4, 4, 2), (1, 1))],
)
def test_circular_conv_matches_dense_circulant(shape, filt):
    flow, x = _setup(nux.CircularConv(filt), shape, scale=0.3)
    k = _np(flow.kernel)
    M = _dense_of(lambda e: _circular_conv_reference(e, k), shape)
    # the exact log-det of the dense circulant matrix: sum_f log|det K_hat(f)|
    _check_affine(flow, x, M, 0.0, np.linalg.slogdet(M)[1])


def test_circular_conv_forward_is_the_convolution():
    x = jr.normal(jr.key(7), (3, 4, 4, 2), jnp.float64)
    flow = _init(nux.CircularConv(), x, key=jr.key(8))
    # starts near the identity: well conditioned
    np.testing.assert_allclose(_np(_run(flow, x)[0]), _np(x), atol=0.5)
    K_hat = np.asarray(flow.kernel_fft(4, 4))
    assert np.linalg.cond(K_hat).max() < 2.0
    # a unit impulse at (0, 0), channel 1, comes out as the kernel's column 1, centred there
    delta = jnp.zeros((4, 4, 2), jnp.float64).at[0, 0, 1].set(1.0)
    z = _np(flow(delta)[0])
    k = _np(flow.kernel)
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(z[(i - 1) % 4, (j - 1) % 4], k[i, j, :, 1], atol=1e-12)


def test_circular_conv_rejects_bad_configurations():
    with pytest.raises(nux.ShapeError, match=r"filter \(5, 3\) is larger than the image \(4, 4\)"):
        nux.init(nux.CircularConv((5, 3)), jnp.zeros((2, 4, 4, 2)), key=jr.key(0))
    with pytest.raises(nux.ShapeError, match=r"takes \(h, w, c\) images"):
        nux.init(nux.CircularConv(), jnp.zeros((2, 9)), key=jr.key(0))
    for bad in [0, (3,), (0, 3), (-1, 3), (3.0, 3), None]:
        with pytest.raises(ValueError, match="filter_size must be a pair of positive ints"):
            nux.CircularConv(bad)


@pytest.mark.parametrize(
    "layer", [nux.OneByOneConvLDU(), nux.OneByOneConvLU(), nux.LocalDense(), nux.CircularConv()], ids=type
)
def test_image_layers_reject_vectors(layer):
    with pytest.raises(nux.ShapeError, match=r"takes \(h, w, c\) images.*got examples of shape \(4,\)"):
        nux.init(layer, jnp.zeros((3, 4)), key=jr.key(0))


def test_parameters_take_the_batch_dtype():
    for layer, shape in [
        (nux.AffineSVD(2), (4,)),
        (nux.OneByOneConvLU(), (2, 2, 3)),
        (nux.CircularConv(), (4, 4, 2)),
    ]:
        for dtype in (jnp.float32, jnp.float64):
            flow = _init(layer, jnp.ones((2, *shape), dtype), key=jr.key(0))
            params, _ = nux.trainable(flow)
            assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(dtype)}
            z, c = _run(flow, jnp.ones((1, *shape), dtype))
            assert z.dtype == dtype and c.dtype == dtype


@pytest.mark.parametrize(
    ("layer", "shape"),
    [(nux.OneByOneConvLU(), (2, 2, 3)), (nux.CircularConv(), (4, 4, 2)), (nux.AffineSVD(2), (4,))],
    ids=lambda v: type(v).__name__ if isinstance(v, nux.AbstractFlow) else str(v),
)
def test_skeleton_checkpoint_and_plain_jit(layer, shape, tmp_path):
    x = jr.normal(jr.key(9), (3, *shape), jnp.float64)
    flow = _init(layer, x, key=jr.key(10))
    skeleton = eqx.filter_eval_shape(nux.init, layer, x, key=jr.key(0))
    eqx.tree_serialise_leaves(tmp_path / "flow.eqx", flow)
    loaded = eqx.tree_deserialise_leaves(tmp_path / "flow.eqx", skeleton)
    z_plain = jax.jit(lambda f, v: jax.vmap(lambda u: f(u)[0])(v))(loaded, x)  # every non-array field static
    np.testing.assert_allclose(_np(z_plain), _np(_run(flow, x)[0]), rtol=1e-12, atol=1e-12)


def test_one_dimensional_ldu_passes_check_flow():
    # 1 feature: the strict triangles are empty (size-0 parameters), which is fine
    with jax.enable_x64(False):
        flow = check_flow(nux.AffineLDU(), jr.normal(jr.key(11), (6, 1)), key=jr.key(12))
    assert flow.L.shape == flow.U.shape == (0,)
