"""NuX's early-API options (issue 16): `OneByOneConv(weight_norm=)`,
`LocalDense(dilation=)`, `UniformDequantization(noise_scale=)`, the noise scale `s` of the
noisy injective layers (and `with_noise_scale`), and the `spectral_norm` conditioner
wrapper. Their `check_flow` cases are in `tests/cases_nux_options.py`."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx.injective import with_noise_scale
from nux_eqx.nn import SpectralNorm, spectral_norm, update_spectral_norm
from nux_eqx.testing import scramble

IMG = jr.normal(jr.key(0), (4, 8, 8, 2))


# ---- OneByOneConv(weight_norm=) ------------------------------------------------------


def test_one_by_one_conv_weight_norm_uses_unit_columns():
    f = nux.init(nux.OneByOneConv(weight_norm=True), IMG, key=jr.key(1))
    f = eqx.tree_at(lambda m: m.W, f, f.W * jnp.array([2.0, 0.5]))  # columns of norm 2 and 0.5
    M = f.weight()
    np.testing.assert_allclose(np.linalg.norm(M, axis=0), 1.0, rtol=1e-6)
    x = IMG[0]
    z, c = f(x)
    np.testing.assert_allclose(z, jnp.einsum("ij,hwj->hwi", M, x), rtol=1e-5, atol=1e-6)
    assert float(c) == pytest.approx(64 * float(jnp.linalg.slogdet(M)[1]), abs=1e-4)
    # without weight norm the same W gives another map
    g = nux.init(nux.OneByOneConv(), IMG, key=jr.key(1))
    g = eqx.tree_at(lambda m: m.W, g, f.W)
    assert not np.allclose(g(x)[0], z)


def test_one_by_one_conv_weight_norm_validates():
    with pytest.raises(ValueError, match="weight_norm must be True or False"):
        nux.OneByOneConv(weight_norm="yes")


# ---- LocalDense(dilation=) -----------------------------------------------------------


def test_local_dense_dilation_mixes_pixels_dilation_apart():
    """With filter 2x2 and dilation (2, 2), W = a permutation that swaps the patch's first
    two entries exchanges pixels (r, c) and (r, c + 2) of each 4x4 block."""
    x = jnp.arange(8 * 8, dtype=jnp.float32).reshape(8, 8, 1)
    f = nux.init(nux.LocalDense((2, 2), init="identity", dilation=(2, 2)), x[None], key=jr.key(0))
    P = jnp.eye(4)[jnp.array([1, 0, 2, 3])]
    f = eqx.tree_at(lambda m: m.W, f, P)
    z, c = f(x)
    expect = np.asarray(x).copy()
    for r0 in (0, 4):
        for c0 in (0, 4):
            for b in (0, 1):  # the dh = 2 interleaved patches of the block
                for bw in (0, 1):
                    r, col = r0 + b, c0 + bw
                    expect[r, col], expect[r, col + 2] = x[r, col + 2], x[r, col]
    np.testing.assert_array_equal(z, expect)
    assert float(c) == pytest.approx(0.0, abs=1e-6)  # |det P| = 1
    # dilation 1 is the plain patch map
    g = nux.init(nux.LocalDense((2, 2), init="identity"), x[None], key=jr.key(0))
    g = eqx.tree_at(lambda m: m.W, g, P)
    assert not np.array_equal(g(x)[0], z)


def test_local_dense_dilation_round_trips_and_checks_shapes():
    f = nux.init(nux.LocalDense((2, 1), dilation=(2, 4)), IMG, key=jr.key(0))
    z, c = jax.vmap(f)(IMG)
    xr, cr = jax.vmap(lambda v: f(v, True))(z)
    np.testing.assert_allclose(xr, IMG, atol=1e-5)
    np.testing.assert_allclose(cr, c, atol=1e-5)
    with pytest.raises(nux.ShapeError, match=r"times the dilation \(3, 3\)"):
        nux.init(nux.LocalDense((1, 1), dilation=3), IMG, key=jr.key(0))
    with pytest.raises(ValueError, match="dilation must be a pair"):
        nux.LocalDense(dilation=(0, 1))


# ---- UniformDequantization(noise_scale=) ---------------------------------------------


def test_dequantization_noise_scale_width_and_bound_term():
    x = jnp.floor(jr.uniform(jr.key(0), (64, 3)) * 17)
    f = nux.init(nux.UniformDequantization(17.0, noise_scale=0.25), x, key=jr.key(1))
    keys = jr.split(jr.key(2), 64)
    z, c = jax.vmap(lambda v, k: f(v, key=k))(x, keys)
    u = np.asarray(z * 17 - x)
    assert u.min() >= 0 and u.max() < 0.25 and u.max() > 0.2  # noise of width 0.25
    np.testing.assert_allclose(c, 3 * (math.log(0.25) - math.log(17.0)), rtol=1e-6)
    xr, _ = jax.vmap(lambda v: f(v, True))(z)
    np.testing.assert_array_equal(xr, x)
    # the default is NuX's noise of width 1, and the old contribution
    g = nux.init(nux.UniformDequantization(17.0), x, key=jr.key(1))
    assert g.noise_scale == 1.0
    np.testing.assert_allclose(g(x[0], key=keys[0])[1], -3 * math.log(17.0), rtol=1e-6)


@pytest.mark.parametrize("bad", [0.0, 1.5, -1.0])
def test_dequantization_noise_scale_validates(bad):
    with pytest.raises(ValueError, match=r"noise_scale .* must be in \(0, 1\]"):
        nux.UniformDequantization(noise_scale=bad)


# ---- the noise scale s of the NIFs ---------------------------------------------------


@pytest.mark.parametrize(
    "make, data",
    [
        (lambda **kw: nux.TallAffineDiagCov(3, **kw), jr.normal(jr.key(0), (4, 6))),
        (lambda **kw: nux.UpSample(**kw), jr.normal(jr.key(0), (4, 4, 4, 2))),
        (
            lambda **kw: nux.CouplingTallAffineDiagCov(3, hidden_layer_sizes=(8,), **kw),
            jr.normal(jr.key(0), (4, 6)),
        ),
    ],
)
def test_nif_noise_scale_scales_the_sampling_noise(make, data):
    f = nux.init(make(), data, key=jr.key(1))
    f = scramble(f, jr.key(4))  # a non-trivial noise covariance
    z, _ = f(data[0])
    k = jr.key(5)
    mean, c_det = f(z, True)
    noisy, _ = f(z, True, key=k)
    for s in (0.5, 2.0):
        half, _ = with_noise_scale(f, s)(z, True, key=k)
        if isinstance(f, nux.CouplingTallAffineDiagCov):
            # the second half's noise feeds the first half's conditioner: only check x2
            continue
        np.testing.assert_allclose(half - mean, s * (noisy - mean), rtol=1e-4, atol=1e-5)
    off = with_noise_scale(f, 0.0)
    x0, c0 = off(z, True, key=k)
    np.testing.assert_allclose(x0, mean, atol=1e-6)  # noise switched off even with a key
    np.testing.assert_allclose(c0, c_det, rtol=1e-6)
    assert f.s == 1.0 and off.s == 0.0  # pure: the original is unchanged
    # the forward density does not depend on s
    np.testing.assert_allclose(off(data[0], key=k)[1], f(data[0], key=k)[1], rtol=1e-6)


def test_sampling_a_flow_with_the_noise_switched_off():
    x = jr.normal(jr.key(0), (8, 6))
    flow = nux.init(nux.Sequential(nux.TallAffineDiagCov(2), nux.UnitGaussianPrior()), x, key=jr.key(1))
    quiet = with_noise_scale(flow, 0.0)
    xs, _ = nux.sample(quiet, jr.key(3))
    # on the generator's range: the pseudo-inverse round trip is exact
    z, _ = quiet.layers[0](xs)
    np.testing.assert_allclose(quiet.layers[0](z, True)[0], xs, atol=1e-5)
    xn, _ = nux.sample(flow, jr.key(3))
    assert not np.allclose(xn, xs)
    with pytest.raises(ValueError, match="s \\(the noise scale of sampling\\) must be a finite number >= 0"):
        nux.TallAffineDiagCov(2, s=-1.0)
    with pytest.raises(ValueError, match="noise scale"):
        with_noise_scale(flow, float("nan"))


# ---- spectral_norm -------------------------------------------------------------------


def _sigmas(module):
    return [
        float(np.linalg.svd(np.asarray(w).reshape(-1, w.shape[-1]) if w.ndim > 2 else w, compute_uv=False)[0])
        for w in jax.tree.leaves(module)
        if eqx.is_inexact_array(w) and w.ndim >= 2
    ]


def test_spectral_norm_bounds_every_weight_and_leaves_small_ones():
    fac = spectral_norm(
        functools.partial(nux.nn.default_network, hidden_layer_sizes=(16, 16), zero_init=False)
    )
    net = fac((4,), (6,), key=jr.key(0))
    assert isinstance(net, SpectralNorm)
    raw = _sigmas(net.network)
    assert max(raw) > 0.97
    normed = _sigmas(net.normalised())
    for r, n in zip(raw, normed):
        assert n == pytest.approx(min(r, 0.97), rel=1e-4)
    x = jr.normal(jr.key(1), (4,))
    np.testing.assert_allclose(net(x), net.normalised()(x), rtol=1e-6)
    # images: the ConvNet's HWIO kernels are bounded too
    cnet = spectral_norm(functools.partial(nux.nn.default_network, n_channels=8, zero_init=False), scale=0.5)(
        (4, 4, 2), (4, 4, 4), key=jr.key(2)
    )
    assert all(s <= 0.5 * (1 + 1e-4) for s in _sigmas(cnet.normalised()))


def test_spectral_norm_state_is_a_pure_pytree_updated_by_update_spectral_norm():
    x = jr.normal(jr.key(0), (8, 4))
    fac = spectral_norm(functools.partial(nux.nn.default_network, hidden_layer_sizes=(16,), zero_init=False))
    flow = nux.init(nux.Coupling(network_factory=fac), x, key=jr.key(1))
    # u is a NonTrainable array: not in the trainable partition
    params, _ = nux.trainable(flow)
    assert all(
        u is None or not eqx.is_array(u)
        for u in jax.tree.leaves(params.network.u, is_leaf=lambda v: v is None)
    )
    # after a big change of the weights, one update moves u towards the new top singular vector
    W = flow.network.network.layers[0].weight
    Wn = W + 3.0 * jnp.outer(jnp.ones(W.shape[0]), jnp.arange(W.shape[1], dtype=W.dtype))
    flow = eqx.tree_at(lambda f: f.network.network.layers[0].weight, flow, Wn)
    top = np.linalg.svd(np.asarray(Wn))[0][:, 0]
    before = abs(float(flow.network.u[0].value @ top))
    new = eqx.filter_jit(update_spectral_norm)(flow)
    after = abs(float(new.network.u[0].value @ top))
    assert after > before and after > 0.99
    assert abs(float(flow.network.u[0].value @ top)) == before  # pure: the original is unchanged
    with pytest.raises(ValueError, match="scale"):
        spectral_norm(scale=0.0)
    with pytest.raises(ValueError, match="n_iters"):
        spectral_norm(n_iters=0)
