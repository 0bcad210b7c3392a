"""The core contract: calling conventions, errors, transforms, init, sample/log_prob, save/load."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import nux_eqx as nux

SMALL = dict(hidden_layer_sizes=(16, 16))


def make_flow():
    return nux.Sequential(
        nux.ActNorm(), nux.Coupling(**SMALL), nux.Reverse(), nux.Coupling(**SMALL), nux.UnitGaussianPrior()
    )


@pytest.fixture(scope="module")
def flow():
    x = jr.normal(jr.key(1), (32, 4))
    return nux.init(make_flow(), x, key=jr.key(2))


@pytest.fixture(scope="module")
def xs():
    return jr.normal(jr.key(3), (8, 4))


# ---- errors from the framework, before beartype ----------------------------------------


def test_batched_input_says_use_vmap(flow, xs):
    with pytest.raises(nux.ShapeError, match=r"expected an input of shape \(4,\), got \(8, 4\).*jax.vmap"):
        flow(xs)


def test_batched_input_inside_filter_jit(flow, xs):
    with pytest.raises(nux.ShapeError, match="Sequential expected an input of shape.*jax.vmap"):
        eqx.filter_jit(lambda f, x: f(x))(flow, xs)


def test_wrong_size_and_rank(flow):
    with pytest.raises(nux.ShapeError, match=r"expected an input of shape \(4,\), got \(5,\)"):
        flow(jnp.zeros(5))
    with pytest.raises(nux.ShapeError, match=r"expected an input of shape \(4,\), got \(2, 2\)"):
        flow(jnp.zeros((2, 2)))
    with pytest.raises(nux.ShapeError, match=r"latent \(reverse\) input of shape \(4,\), got \(3,\)"):
        flow(jnp.zeros(3), reverse=True)


def test_layer_names_itself(flow):
    with pytest.raises(nux.ShapeError, match="^Coupling expected"):
        flow.layers[1](jnp.zeros(7))


def test_uninitialised_says_call_init():
    with pytest.raises(nux.NotInitialisedError, match=r"nux_eqx.init"):
        make_flow()(jnp.zeros(4))
    with pytest.raises(nux.NotInitialisedError, match=r"nux_eqx.init"):
        eqx.filter_jit(lambda f, x: f(x))(make_flow(), jnp.zeros(4))
    with pytest.raises(nux.NotInitialisedError):
        nux.sample(make_flow(), jr.key(0))


def test_bad_dtypes(flow):
    with pytest.raises(TypeError, match="real floating"):
        flow(jnp.zeros(4, jnp.complex64))
    with pytest.raises(TypeError, match="real floating"):
        flow(jnp.zeros(4, bool))
    z, _ = flow(jnp.arange(4))  # integers are promoted
    assert z.dtype == jnp.float32


def test_reverse_must_be_python_bool(flow):
    with pytest.raises(TypeError, match="Python bool"):
        flow(jnp.zeros(4), jnp.array(True))


def test_missing_key_for_stochastic_layer():
    f = nux.init(nux.UniformDequantization(scale=4.0), jnp.zeros((3, 2)), key=jr.key(0))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        f(jnp.zeros(2))
    f(jnp.zeros(2), reverse=True)  # reverse is deterministic


def test_init_rejects_unbatched():
    with pytest.raises(nux.ShapeError, match="leading batch axis"):
        nux.init(make_flow(), jnp.zeros(4), key=jr.key(0))


def test_layer_config_errors():
    with pytest.raises(ValueError, match="kind must be"):
        nux.Coupling(kind="spline")
    with pytest.raises(TypeError, match="instead of an instance"):
        nux.Sequential(nux.ActNorm)
    with pytest.raises(nux.ShapeError, match="even h and w"):
        nux.init(nux.Squeeze(), jnp.zeros((2, 3, 4, 1)), key=jr.key(0))
    with pytest.raises(nux.ShapeError, match="divisible by 4"):
        nux.init(nux.UnSqueeze(), jnp.zeros((2, 2, 2, 6)), key=jr.key(0))
    with pytest.raises(nux.ShapeError, match="2 flows were given"):
        nux.init(nux.Factored(nux.Identity(), nux.Identity(), split=3), jnp.zeros((2, 6)), key=jr.key(0))
    with pytest.raises(nux.ShapeError, match="out_dim=5 is larger than the input size 4"):
        nux.init(nux.AffineGaussianPriorDiagCov(5), jnp.zeros((2, 4)), key=jr.key(0))
    with pytest.raises(nux.ShapeError, match="Squeeze"):
        nux.init(nux.Coupling(), jnp.zeros((2, 4, 4, 1)), key=jr.key(0))


# ---- transforms --------------------------------------------------------------------------


def test_works_under_jax_transforms(flow, xs):
    z, c = jax.vmap(flow)(xs)
    zj, cj = jax.jit(jax.vmap(flow))(xs)  # plain jax.jit: every non-array field is static
    assert jnp.allclose(z, zj, atol=1e-5) and jnp.allclose(c, cj, atol=1e-4)
    zn, cn = jax.vmap(jax.vmap(flow))(xs.reshape(2, 4, 4))
    assert jnp.allclose(zn.reshape(8, 4), z, atol=1e-6) and jnp.allclose(cn.reshape(8), c, atol=1e-5)
    zf, _ = eqx.filter_jit(lambda f, x: jax.vmap(f)(x))(flow, xs)
    assert jnp.allclose(zf, z, atol=1e-5)

    @eqx.filter_grad
    def grad(f, x):
        return -jnp.mean(jax.vmap(lambda v: nux.log_prob(f, v))(x))

    g = grad(flow, xs)
    assert all(jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(g))
    # jit over a flow as an argument: reverse is a Python bool, static for filter_jit
    x_rec, _ = eqx.filter_jit(lambda f, z: jax.vmap(lambda v: f(v, True))(z))(flow, z)
    assert jnp.allclose(x_rec, xs, atol=1e-5)


def test_sample_log_q_equals_log_prob(flow):
    keys = jr.split(jr.key(7), 16)
    x, log_q = jax.vmap(lambda k: nux.sample(flow, k))(keys)
    lp = jax.vmap(lambda v: nux.log_prob(flow, v))(x)
    assert x.shape == (16, 4)
    assert jnp.allclose(log_q, lp, atol=1e-4, rtol=1e-5)
    x0, _ = nux.sample(flow, keys[0], temperature=0.0)
    assert jnp.all(jnp.isfinite(x0))


def test_sample_log_q_multiscale():
    f = nux.init(
        nux.MultiscaleGlow(2, 1, 8, factor_out="chain_rule"),
        jr.normal(jr.key(0), (8, 4, 4, 1)),
        key=jr.key(1),
    )
    x, lq = jax.vmap(lambda k: nux.sample(f, k))(jr.split(jr.key(2), 4))
    assert x.shape == (4, 4, 4, 1)
    assert jnp.allclose(jax.vmap(lambda v: nux.log_prob(f, v))(x), lq, atol=1e-3, rtol=1e-4)


def test_init_is_pure_and_traceable():
    flow = make_flow()
    x = jr.normal(jr.key(0), (16, 4))
    f1 = nux.init(flow, x, key=jr.key(1))
    assert not flow.is_initialised and flow.layers[0].b is None  # input untouched
    skeleton = eqx.filter_eval_shape(
        nux.init, flow, jax.ShapeDtypeStruct((16, 4), jnp.float32), key=jr.key(1)
    )
    assert jax.tree.structure(skeleton) == jax.tree.structure(f1)
    assert skeleton.layers[0].b.shape == (4,)


def test_eager_init_compiles_each_layer_once_and_equals_the_jitted_init():
    # outside jit, init compiles each leaf layer's init + push as its own cached program;
    # the result is the one of a single jitted init, and identical blocks compile once
    from nux_eqx import _flow

    block = [nux.ActNorm(), nux.Coupling(**SMALL), nux.Reverse()]
    flow = nux.Sequential(*(block * 3), nux.UnitGaussianPrior())
    x = 1.0 + 2.0 * jr.normal(jr.key(0), (64, 4))
    traced = []
    real = _flow._fill_and_push

    def spy(layer, *args):
        traced.append(type(layer).__name__)  # runs once per compilation
        return real(layer, *args)

    _flow._fill_and_push = spy
    try:
        nux.init(flow, x, key=jr.key(1))
        first = list(traced)
        traced.clear()
        eager = nux.init(flow, x + 1.0, key=jr.key(2))  # the same shapes: no new compilation
    finally:
        _flow._fill_and_push = real
    # 10 layers of 4 kinds (and the coupling's transformer): each traced once, not per block
    assert len(first) == len(set(first)) <= 5
    assert traced == []
    eager = nux.init(flow, x, key=jr.key(1))
    jitted = eqx.filter_jit(nux.init)(flow, x, key=jr.key(1))
    assert jax.tree.structure(eager) == jax.tree.structure(jitted)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        assert jnp.allclose(a, b, atol=1e-5)
    assert eager.in_shape == (4,) and eager.layers[1].out_shape == (4,)
    with nux.check_finite():  # a trace-time flag reaches the compiled init
        nux.init(flow, x, key=jr.key(1))


def test_actnorm_is_data_dependent():
    x = 3.0 + 2.0 * jr.normal(jr.key(0), (512, 3))
    f = nux.init(nux.ActNorm(), x, key=jr.key(0))
    z, _ = jax.vmap(f)(x)
    assert jnp.allclose(z.mean(0), 0, atol=1e-4) and jnp.allclose(z.std(0), 1, atol=1e-3)


def test_params_follow_data_dtype():
    with jax.enable_x64(True):
        x = jr.normal(jr.key(0), (16, 4), jnp.float64)
        f = nux.init(make_flow(), x, key=jr.key(1))
        dtypes = {leaf.dtype for leaf in jax.tree.leaves(f) if eqx.is_inexact_array(leaf)}
        assert dtypes == {jnp.dtype(jnp.float64)}
        z, c = f(x[0])
        assert z.dtype == jnp.float64 and c.dtype == jnp.float64


def test_invert_swaps_directions(flow, xs):
    inner = flow.layers[1]
    inv = nux.Invert(inner)
    inv = nux.init(inv, xs, key=jr.key(0))  # an initialised inner flow is kept
    z, c = inner(xs[0])
    x_back, c_inv = inv(z)
    assert jnp.allclose(x_back, xs[0], atol=1e-5) and jnp.allclose(c_inv, -c)


def test_capture(flow, xs):
    z, c, records = nux.capture(flow, xs[0])
    assert list(records) == [f"layers[{i}]" for i in range(5)]
    assert jnp.allclose(sum(r.contribution for r in records.values()), c)
    assert jnp.allclose(records["layers[4]"].z, z)
    # it composes with vmap
    zb, cb, recb = jax.vmap(lambda v: nux.capture(flow, v))(xs)
    assert recb["layers[1]"].x.shape == (8, 4)


def test_readme_constant_data_quickstart():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "examples" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main()  # random data
    x_train, x_test = jnp.ones((2, 100, 4))
    flow, z, ll, rec = mod.main(x_train, x_test)  # zero variance for ActNorm
    assert jnp.all(jnp.isfinite(z)) and jnp.all(jnp.isfinite(ll))
    assert jnp.allclose(rec, x_test, atol=1e-5)
