"""The rational-quadratic spline: against a NumPy transcription of Durkan et al. (2019),
finite gradients everywhere (inside, on the bounds, far outside), and configuration errors."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nux_eqx as nux
from nux_eqx.testing import scramble

# --------------------------------------------------------------------------------------
# A direct NumPy transcription, written independently of the library.
# --------------------------------------------------------------------------------------


def np_softmax(u):
    e = np.exp(u - u.max())
    return e / e.sum()


def np_softplus(u):
    return np.log1p(np.exp(-abs(u))) + max(u, 0.0)


def np_knots(uw, uh, ud, B, mw=1e-3, mh=1e-3, md=1e-3):
    """Knots of one spline: bin widths/heights `m + (1 - K m) softmax`, interior slopes
    `md + softplus(u + log(e^{1 - md} - 1))`, end slopes 1."""
    K = len(uw)
    w = mw + (1 - K * mw) * np_softmax(uw)
    h = mh + (1 - K * mh) * np_softmax(uh)
    xk = np.concatenate([[-B], -B + 2 * B * np.cumsum(w)])
    yk = np.concatenate([[-B], -B + 2 * B * np.cumsum(h)])
    xk[-1] = yk[-1] = B
    shift = np.log(np.expm1(1 - md))
    d = np.array([1.0] + [md + np_softplus(u + shift) for u in ud] + [1.0])
    return xk, yk, d


def np_bin(v, knots):
    k = np.searchsorted(knots, v, side="right") - 1
    return min(max(k, 0), len(knots) - 2)


def np_forward(x, xk, yk, d):
    """Paper eq. (4) and the derivative (eq. 5): returns (g(x), g'(x)); identity outside."""
    if x < xk[0] or x > xk[-1]:
        return x, 1.0
    k = np_bin(x, xk)
    w, h = xk[k + 1] - xk[k], yk[k + 1] - yk[k]
    s = h / w
    xi = (x - xk[k]) / w
    num = h * (s * xi**2 + d[k] * xi * (1 - xi))
    den = s + (d[k + 1] + d[k] - 2 * s) * xi * (1 - xi)
    g = yk[k] + num / den
    dg = s**2 * (d[k + 1] * xi**2 + 2 * s * xi * (1 - xi) + d[k] * (1 - xi) ** 2) / den**2
    return g, dg


def np_inverse(y, xk, yk, d):
    """Paper eqs. (6)-(8): the root of a xi^2 + b xi + c = 0 in [0, 1]; identity outside."""
    if y < yk[0] or y > yk[-1]:
        return y
    k = np_bin(y, yk)
    w, h = xk[k + 1] - xk[k], yk[k + 1] - yk[k]
    s = h / w
    a = h * (s - d[k]) + (y - yk[k]) * (d[k + 1] + d[k] - 2 * s)
    b = h * d[k] - (y - yk[k]) * (d[k + 1] + d[k] - 2 * s)
    c = -s * (y - yk[k])
    xi = 2 * c / (-b - math.sqrt(b * b - 4 * a * c))
    return xk[k] + xi * w


def _params(seed, K, n, scale=1.0):
    rng = np.random.default_rng(seed)
    return (
        scale * rng.standard_normal((n, K)),
        scale * rng.standard_normal((n, K)),
        scale * rng.standard_normal((n, K - 1)),
    )


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / (1 + np.abs(b))))


@functools.partial(jax.jit, static_argnames=("B", "inverse"))
def _rqs(x, w, h, d, *, B, inverse=False):
    """The spline and, from the same compiled code, its knots (a float32 cumsum compiled
    elsewhere may round differently by an ulp, which a steep narrow bin amplifies)."""
    return (*nux.rational_quadratic_spline(x, w, h, d, B=B, inverse=inverse), nux.spline_knots(w, h, d, B=B))


@functools.partial(jax.jit, static_argnames=("B",))
def _slope(x, w, h, d, *, B):
    return jax.vmap(jax.grad(lambda v: nux.rational_quadratic_spline(v, w, h, d, B=B)[0]))(x)


def _random_params(seed, K, n=6):
    uw, uh, ud = _params(seed, K, n, scale=1.5)
    return [(uw[i], uh[i], ud[i]) for i in range(n)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("K,B", [(2, 1.0), (5, 3.0), (8, 2.5)])
def test_matches_numpy_transcription(dtype, K, B):
    rng = np.random.default_rng(K)
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        for uw, uh, ud in _random_params(K * 7 + 1, K):
            P = [jnp.asarray(p, dt) for p in (uw, uh, ud)]
            # The parametrisation: the library's knots equal the transcription's.
            jk = nux.spline_knots(*P, B=B)
            for got, ref in zip(jk, np_knots(uw, uh, ud, B)):
                assert got.dtype == dt
                assert _rel(got, ref) < 1e-6
            # The bin formulas, on the library's knots: in float32 a knot computed in float64
            # can sit an ulp inside the neighbouring bin, where the derivative of a narrow bin
            # can differ by more than 1e-5.
            # Forward value and derivative: random points, every knot (±B included), tails.
            x = jnp.concatenate([jnp.asarray(rng.uniform(-1.3 * B, 1.3 * B, 10), dt), jk[0]])
            y, log_det, knots = _rqs(x, *P, B=B)
            xk, yk, d = (np.asarray(a, np.float64) for a in knots)
            assert xk[0] == yk[0] == -B and xk[-1] == yk[-1] == B
            ref = np.array([np_forward(v, xk, yk, d) for v in np.asarray(x, np.float64)])
            assert y.dtype == dt and log_det.dtype == dt
            assert _rel(y, ref[:, 0]) < 1e-5
            assert _rel(log_det, np.log(ref[:, 1])) < 1e-5
            # The derivative also equals autodiff of the forward map.
            grad = _slope(x, *P, B=B)
            assert _rel(grad, ref[:, 1]) < 1e-5
            # Inverse: random points, every y-knot (±B included), tails.
            yv = jnp.concatenate([jnp.asarray(rng.uniform(-1.3 * B, 1.3 * B, 10), dt), knots[1]])
            xr, log_det_r, knots = _rqs(yv, *P, B=B, inverse=True)
            xk, yk, d = (np.asarray(a, np.float64) for a in knots)
            ref_x = np.array([np_inverse(v, xk, yk, d) for v in np.asarray(yv, np.float64)])
            assert _rel(xr, ref_x) < 1e-5
            # The knots map back to the knots.
            np.testing.assert_allclose(xr[10:], xk, rtol=1e-5, atol=1e-5)
            # The inverse reports log g' at the forward-side point (the same in both directions).
            ref_d = np.array([np_forward(v, xk, yk, d)[1] for v in ref_x])
            assert _rel(log_det_r, np.log(ref_d)) < 1e-5
            # Round trip.
            y2 = _rqs(xr, *P, B=B)[0]
            assert _rel(y2, yv) < 1e-5


def test_knots_map_to_knots_and_tails_are_identity():
    uw, uh, ud = (jnp.asarray(p, jnp.float32) for p in _params(3, 6, 1))
    xk, yk, _ = nux.spline_knots(uw, uh, ud, B=2.0)
    y, _ = nux.rational_quadratic_spline(xk, uw, uh, ud, B=2.0)
    np.testing.assert_allclose(y, yk, atol=1e-6)
    outside = jnp.array([[-50.0, -2.0001, 2.0001, 7.0, 1e6, -1e6]])
    y, log_det = nux.rational_quadratic_spline(outside, uw, uh, ud, B=2.0)
    np.testing.assert_array_equal(y, outside)
    np.testing.assert_array_equal(log_det, 0.0)
    x, log_det = nux.rational_quadratic_spline(outside, uw, uh, ud, B=2.0, inverse=True)
    np.testing.assert_array_equal(x, outside)
    np.testing.assert_array_equal(log_det, 0.0)


def test_zero_parameters_give_the_identity_and_the_map_is_monotone():
    K = 7
    z = jnp.zeros((K,))
    x = jnp.linspace(-4.0, 4.0, 101)
    y, log_det = nux.rational_quadratic_spline(x, z, z, jnp.zeros((K - 1,)), B=3.0)
    np.testing.assert_allclose(y, x, atol=1e-6)
    np.testing.assert_allclose(log_det, 0.0, atol=1e-6)
    uw, uh, ud = (jnp.asarray(p[0], jnp.float32) for p in _params(5, K, 1, scale=3.0))
    y, _ = nux.rational_quadratic_spline(x, uw, uh, ud, B=3.0)
    assert np.all(np.diff(np.asarray(y)) > 0)


@functools.partial(jax.jit, static_argnames=("B", "inverse"))
def _all_grads(points, w, h, d, *, B, inverse):
    def loss(v, w, h, d):
        out, log_det = nux.rational_quadratic_spline(v, w, h, d, B=B, inverse=inverse)
        return out + log_det

    def slope(v):
        return jax.grad(lambda u: nux.rational_quadratic_spline(u, w, h, d, B=B, inverse=inverse)[0])(v)

    per_point = jax.vmap(jax.grad(loss, argnums=(0, 1, 2, 3)), in_axes=(0, None, None, None))(points, w, h, d)
    batched = jax.grad(lambda *a: jnp.sum(loss(*a)), argnums=(0, 1, 2, 3))(
        points, *(jnp.broadcast_to(p, (points.shape[0], p.shape[-1])) for p in (w, h, d))
    )
    return per_point, batched, jax.vmap(slope)(points)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("inverse", [False, True])
def test_gradients_are_finite_inside_on_the_edge_and_far_outside(dtype, inverse):
    K, B = 5, 3.0
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        uw, uh, ud = (jnp.asarray(p[0], dt) for p in _params(11, K, 1, scale=2.0))
        knots = nux.spline_knots(uw, uh, ud, B=B)[1 if inverse else 0]
        edge = jnp.asarray([0.3, -1.7, B, -B, 1e6, -1e6, 3.5, -1e3, np.nextafter(B, 0, dtype=dt)], dt)
        points = jnp.concatenate([edge, knots[1:-1]])
        per_point, batched, slope = _all_grads(points, uw, uh, ud, B=B, inverse=inverse)
        # d(out + log_det) / d(x, widths, heights, derivatives): finite at every point, alone
        # and batched (one spline per element, as a layer sees it).
        for g in (*per_point, *batched):
            assert g.dtype == dt
            assert np.all(np.isfinite(np.asarray(g))), g
        # The parameters get a gradient from inside points and none from the tails.
        inside = np.abs(np.asarray(points)) < B
        assert np.all(np.any(np.asarray(per_point[1])[inside] != 0, axis=-1))
        np.testing.assert_array_equal(np.asarray(per_point[1])[np.abs(np.asarray(points)) > B], 0.0)
        # The map's slope is 1 in the tails and at ±B (autodiff sees it: no clipping there).
        outside = np.abs(np.asarray(points)) >= B
        np.testing.assert_allclose(np.asarray(slope)[outside], 1.0, rtol=1e-5)
        assert np.all(np.asarray(slope) > 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layers_have_finite_parameter_gradients_for_extreme_inputs(dtype):
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        x = jnp.asarray([[0.1, 3.0, -3.0, 1e6], [-1e6, 2.9, -0.2, 50.0]], dt)
        for layer in (nux.NeuralSpline(K=4, hidden_layer_sizes=(8,)),):
            flow = scramble(eqx.filter_jit(nux.init)(layer, x, key=jr.key(0)), jr.key(1))
            params, static = nux.trainable(flow)

            def loss(p, static=static):
                g = eqx.combine(p, static)
                z, c = jax.vmap(g)(x)
                zr, cr = jax.vmap(lambda v: g(v, True))(z)
                return jnp.sum(c) + jnp.sum(cr) + jnp.sum(jnp.where(jnp.abs(z) < 10, z, 0.0))

            grads = jax.jit(jax.grad(loss))(params)
            for leaf in jax.tree.leaves(grads):
                assert leaf.dtype == dt
                assert np.all(np.isfinite(np.asarray(leaf)))


def test_elementwise_layer_round_trips_in_the_tails():
    x = jnp.asarray([[-8.0, -3.0, 0.5, 3.0, 9.0]])
    flow = scramble(nux.init(nux.RationalQuadraticSpline(K=6), x, key=jr.key(0)), jr.key(3), scale=1.0)
    z, c = flow(x[0])
    xr, cr = flow(z, True)
    np.testing.assert_allclose(xr, x[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cr, c, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(z[jnp.array([0, 4])], x[0, jnp.array([0, 4])])


def test_neural_spline_transforms_the_first_half():
    x = jr.normal(jr.key(0), (4, 5))
    flow = eqx.filter_jit(nux.init)(nux.NeuralSpline(K=4, hidden_layer_sizes=(8,)), x, key=jr.key(1))
    flow = scramble(flow, jr.key(2))
    z, _ = eqx.filter_jit(lambda f, v: jax.vmap(f)(v))(flow, x)
    np.testing.assert_array_equal(z[:, 3:], x[:, 3:])  # ceil(5/2) = 3 features transformed
    for j in range(3):
        assert not np.allclose(z[:, j], x[:, j])
    # x_a does not influence the parameters: dz_a/dx is diagonal in its first block.
    J = eqx.filter_jit(lambda f, v: jax.jacobian(lambda u: f(u)[0])(v))(flow, x[0])
    np.testing.assert_array_equal(J[0, 1], 0.0)
    np.testing.assert_array_equal(J[1, 0], 0.0)


def test_neural_spline_starts_at_the_identity():
    x = jr.normal(jr.key(0), (4, 6))
    flow = eqx.filter_jit(nux.init)(nux.NeuralSpline(K=5, hidden_layer_sizes=(8,)), x, key=jr.key(1))
    z, c = eqx.filter_jit(lambda f, v: jax.vmap(f)(v))(flow, x)
    np.testing.assert_allclose(z, x, atol=1e-6)
    np.testing.assert_allclose(c, 0.0, atol=1e-6)


def test_neural_spline_network_factory():
    seen = {}

    def factory(in_shape, out_shape, *, key):
        seen["shapes"] = (in_shape, out_shape)
        return nux.nn.MLP(in_shape[0], out_shape[0], (8,), key=key)

    x = jr.normal(jr.key(0), (4, 6))
    nux.init(nux.NeuralSpline(K=3, network_factory=factory), x, key=jr.key(1))
    assert seen["shapes"] == ((3,), (3 * (3 * 3 - 1),))

    def bad(in_shape, out_shape, *, key):
        return nux.nn.MLP(in_shape[0], 5, (8,), key=key)

    with pytest.raises(nux.ShapeError, match="expected"):
        nux.init(nux.NeuralSpline(K=3, network_factory=bad), x, key=jr.key(1))


SPLINE_LAYERS = [
    nux.RationalQuadraticSpline,
    nux.NeuralSpline,
    nux.MaskedAutoregressiveSpline,
    nux.ConditionalMaskedAutoregressiveSpline,
]


@pytest.mark.parametrize("layer", SPLINE_LAYERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(K=1), "K .*integer >= 2"),
        (dict(K=0), "K .*integer >= 2"),
        (dict(K=2.5), "K .*integer >= 2"),
        (dict(K=True), "K .*integer >= 2"),
        (dict(B=0.0), "B .*> 0"),
        (dict(B=-1.0), "B .*> 0"),
        (dict(B=float("inf")), "B .*> 0"),
        (dict(K=4, min_bin_width=0.25), r"min_bin_width < 1/K"),
        (dict(K=4, min_bin_width=0.3), r"min_bin_width < 1/K"),
        (dict(K=8, min_bin_height=0.125), r"min_bin_height < 1/K"),
        (dict(min_bin_width=0.0), r"0 < min_bin_width"),
        (dict(min_derivative=0.0), r"min_derivative must be in \(0, 1\)"),
        (dict(min_derivative=1.0), r"min_derivative must be in \(0, 1\)"),
    ],
)
def test_invalid_configurations_are_rejected(layer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer(**kwargs)


def test_function_rejects_invalid_configurations():
    uw, uh, ud = jnp.zeros((4,)), jnp.zeros((4,)), jnp.zeros((3,))
    with pytest.raises(ValueError, match="B .*> 0"):
        nux.rational_quadratic_spline(jnp.zeros(()), uw, uh, ud, B=0.0)
    with pytest.raises(ValueError, match="min_bin_width < 1/K"):
        nux.rational_quadratic_spline(jnp.zeros(()), uw, uh, ud, min_bin_width=0.3)
    with pytest.raises(ValueError, match="K .*integer >= 2"):
        nux.rational_quadratic_spline(jnp.zeros(()), uw[:1], uh[:1], ud[:0])
    with pytest.raises(nux.ShapeError, match="K - 1"):
        nux.rational_quadratic_spline(jnp.zeros(()), uw, uh, jnp.zeros((4,)))


def test_neural_spline_rejects_unsplittable_shapes():
    with pytest.raises(nux.ShapeError, match="at least 2 features"):
        nux.init(nux.NeuralSpline(hidden_layer_sizes=(4,)), jnp.zeros((3, 1)), key=jr.key(0))
    with pytest.raises(nux.ShapeError, match=r"vectors \(d,\) or images"):
        nux.init(nux.NeuralSpline(hidden_layer_sizes=(4,)), jnp.zeros((3, 2, 2)), key=jr.key(0))


# --------------------------------------------------------------------------------------
# Any conditioner output (issue 16: NeuralSpline at its defaults, scrambled, gave NaN in
# reverse): the spline stays finite and monotone, and its inverse is accurate wherever the
# map is not too flat for the dtype.
# --------------------------------------------------------------------------------------


def _big_params(scale, n, K, dtype, seed=0):
    k1, k2, k3 = jr.split(jr.key(seed), 3)
    return tuple((scale * jr.normal(k, (n, m))).astype(dtype) for k, m in ((k1, K), (k2, K), (k3, K - 1)))


@pytest.mark.parametrize("scale", [1e2, 1e35])
def test_finite_and_monotone_for_any_conditioner_output(scale):
    """Unconstrained parameters of any finite size (a trained or scrambled conditioner can
    output hundreds): forward, inverse and the parameter gradients are finite, the inverse
    of an increasing grid is non-decreasing (each preimage stays in its bin), and it lands
    in [-B, B]."""
    n, K, B = 512, 8, 3.0
    w, h, d = _big_params(scale, n, K, jnp.float32)
    y = jnp.linspace(-B, B, n, dtype=jnp.float32)
    x_in = jnp.linspace(-4.0, 4.0, n, dtype=jnp.float32)
    fwd = jax.jit(lambda v, w, h, d: nux.rational_quadratic_spline(v, w, h, d, B=B))
    inv = jax.jit(lambda v, w, h, d: nux.rational_quadratic_spline(v, w, h, d, B=B, inverse=True))
    z, ld = fwd(x_in, w, h, d)
    x, ldr = inv(y, w, h, d)
    z2, ld2 = inv(z, w, h, d)
    for a in (z, ld, x, ldr, z2, ld2):
        assert np.all(np.isfinite(np.asarray(a)))
    assert np.all(np.abs(np.asarray(x)) <= B)
    # one spline, many points: the inverse of an increasing sequence is non-decreasing
    xs, _ = inv(y, w[:1], h[:1], d[:1])
    assert np.all(np.diff(np.asarray(xs)) >= 0)
    grads = jax.grad(
        lambda w, h, d: jnp.sum(inv(y, w, h, d)[0]) + jnp.sum(fwd(x_in, w, h, d)[1]), argnums=(0, 1, 2)
    )(w, h, d)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_inverse_is_accurate_for_a_flat_bin_between_steep_knots():
    """float64: a bin of slope ~1e-3 between knots of slope ~1e4 (parameters of size 1e4).
    The former root formula, (m^2 + q) with m = (1 - r) d0 + r d1, cancelled
    catastrophically there (round-trip error 0.05); the sum-of-squares discriminant keeps
    the error at the level the map's conditioning allows (slope ~1e-10: ~1e-6)."""
    with jax.enable_x64(True):
        w, h, d = _big_params(1e4, 2000, 8, jnp.float64)
        x = 4 * jr.normal(jr.key(1), (2000,), jnp.float64)
        y, ld = nux.rational_quadratic_spline(x, w, h, d)
        xr, ldr = nux.rational_quadratic_spline(y, w, h, d, inverse=True)
        assert float(jnp.max(jnp.abs(xr - x))) < 1e-4
        assert float(jnp.max(jnp.abs(ldr - ld))) < 1e-3


def test_spline_derivatives_through_the_bin_gather_float64():
    """The bin lookup's derivative is a one-hot product (a custom JVP, no scatter-add in
    reverse mode): first and second derivatives in both modes match finite differences,
    and reverse mode equals forward mode, in both directions of the spline."""
    from jax.test_util import check_grads

    with jax.enable_x64(True):
        k = jr.split(jr.key(3), 4)
        uw, uh = jr.normal(k[0], (5, 6), jnp.float64), jr.normal(k[1], (5, 6), jnp.float64)
        ud = jr.normal(k[2], (5, 5), jnp.float64)
        x = jr.uniform(k[3], (5,), jnp.float64, -2.4, 2.4)
        for inverse in (False, True):

            def f(uw, uh, ud, x, inverse=inverse):
                out, log_det = nux.rational_quadratic_spline(x, uw, uh, ud, B=2.5, inverse=inverse)
                return jnp.sum(jnp.sin(out)) + jnp.sum(log_det**2)

            check_grads(f, (uw, uh, ud, x), order=2, modes=("fwd", "rev"), eps=1e-6, atol=1e-5, rtol=1e-5)
