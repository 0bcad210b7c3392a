"""Regression tests for the core defects of issue 16 (each failed before its fix)."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest
from cases import all_cases, data_of, params
from jaxtyping import Array

import nux_eqx as nux

CASES = all_cases()


def _needs_key(flow) -> bool:
    stochastic = jax.tree.leaves(
        flow, is_leaf=lambda m: isinstance(m, nux.AbstractFlow) and type(m).forward_needs_key
    )
    return any(isinstance(m, nux.AbstractFlow) for m in stochastic)


# ---- 1. Equinox's transforms take an initialised flow directly ------------------------------


# the default-constructor cases (every public flow) in the default run, the variants with -m slow
@pytest.mark.parametrize("name", params(CASES, only=lambda n: n.startswith("defaults-")))
def test_equinox_transforms_take_the_flow(name):
    """`eqx.filter_jit(flow)`, `eqx.filter_vmap(flow)` and `eqx.filter_grad` over a function of
    the flow, on every registry case. To stay cheap nothing is compiled or run: `init` and
    the wrapped calls are traced (`filter_eval_shape`), which is where the wrappers read the
    flow (`check_flow` covers their numerics, compiled; an eager `init` of every case cost
    10-25 s each). The flow's own attributes, what defect 1 was about, are checked on real
    initialised flows by `test_init_adds_no_instance_attributes`."""
    case = CASES[name]
    k_data, k_cond, k_init, k_call = jr.split(jr.key(sum(map(ord, name))), 4)
    x = data_of(case, k_data)
    cond = None if case.cond is None else case.cond(k_cond)
    flow = eqx.filter_eval_shape(nux.init, case.make(), x, key=k_init, cond=cond)
    xs = x[:2]
    cs = None if cond is None else jax.tree.map(lambda c: c[:2], cond)
    c0 = None if cs is None else jax.tree.map(lambda c: c[0], cs)

    # the flow is an argument (its leaves traced): a jitted module keeps itself static
    z0, lp0 = eqx.filter_eval_shape(lambda f, v, c: eqx.filter_jit(f)(v, key=k_call, cond=c), flow, xs[0], c0)
    assert z0.shape == flow.out_shape and lp0.shape == ()

    plain = cs is None and not _needs_key(flow)

    def loss(m):
        if plain:
            z, lp = eqx.filter_vmap(m)(xs)  # the flow itself, wrapped
        else:  # filter_vmap takes no keywords
            z, lp = eqx.filter_vmap(lambda v, c: m(v, key=k_call, cond=c))(xs, cs)
        return jnp.sum(lp), z

    grads, z = eqx.filter_eval_shape(eqx.filter_grad(loss, has_aux=True), flow)
    assert z.shape == (2, *flow.out_shape)
    inexact = lambda a: isinstance(a, jax.ShapeDtypeStruct) and jnp.issubdtype(a.dtype, jnp.inexact)  # noqa: E731
    assert jax.tree.structure(grads) == jax.tree.structure(eqx.filter(flow, inexact))


def _fields_only(flow):
    """Every module in `flow` holds only its dataclass fields as instance attributes."""
    for m in jax.tree.leaves(flow, is_leaf=lambda m: isinstance(m, eqx.Module)):
        if isinstance(m, eqx.Module):
            extra = set(vars(m)) - {f.name for f in dataclasses.fields(m)}
            assert not extra, f"{type(m).__name__} carries non-field attributes {sorted(extra)}"


@pytest.mark.parametrize(
    "make, shape",
    [
        (
            lambda: nux.Sequential(
                nux.ActNorm(), nux.Coupling(hidden_layer_sizes=(8,)), nux.UnitGaussianPrior()
            ),
            (6, 4),
        ),
        (lambda: nux.Factored(nux.UnitGaussianPrior(), nux.DiagGaussianPrior()), (6, 4)),
        (lambda: nux.Repeat(nux.Sequential(nux.ActNorm(), nux.Reverse()), 2), (6, 3)),
        (
            lambda: nux.multi_scale(
                nux.Sequential(nux.ActNorm(), nux.OneByOneConv()), nux.UnitGaussianPrior()
            ),
            (4, 4, 4, 2),
        ),
        (
            lambda: nux.Sequential(
                nux.Squeeze(), nux.ChainRule(nux.UnitGaussianPrior(), nux.UnitGaussianPrior())
            ),
            (4, 4, 4, 2),
        ),
    ],
)
def test_init_adds_no_instance_attributes(make, shape):
    """Defect 1's cause: the shallow copy that records shapes left `__name__` (equinox's
    `Missing`) on initialised modules, and `eqx.filter_jit(flow)` refused them. Checked on
    real (eager) inits through every container, then the module itself is jitted."""
    x = jr.normal(jr.key(0), shape)
    flow = nux.init(make(), x, key=jr.key(1))
    _fields_only(flow)
    assert not hasattr(flow, "__name__")
    z, lp = eqx.filter_jit(flow)(x[0])
    assert z.shape == flow.out_shape and lp.shape == ()


class _Double(nux.AbstractBijection):
    """A user layer with its own `__init__` that leaves the recorded shapes at their defaults."""

    factor: float

    def __init__(self, factor: float = 2.0):
        self.factor = factor

    def transform(self, x: Array, reverse: bool, *, key, cond):
        f = 1 / self.factor if reverse else self.factor
        return x * f, x.size * jnp.log(jnp.abs(jnp.asarray(self.factor)))


def test_flow_with_custom_init_survives_tree_round_trips():
    flow = nux.Sequential(_Double(), nux.UnitGaussianPrior())
    flow = jax.tree.map(lambda a: a, nux.init(flow, jnp.ones((3, 2)), key=jr.key(0)))
    for m in jax.tree.leaves(flow, is_leaf=lambda m: isinstance(m, eqx.Module)):
        if isinstance(m, eqx.Module):
            assert "__name__" not in vars(m), type(m).__name__
    z, lp = eqx.filter_jit(flow)(jnp.ones(2))
    assert jnp.allclose(z, 2.0)
    zs, _ = eqx.filter_vmap(flow)(jnp.ones((3, 2)))
    assert zs.shape == (3, 2)


# ---- 2. init refuses data with no examples, NaN or inf (eagerly) ----------------------------


@pytest.mark.parametrize(
    "make, shape",
    [(lambda: nux.Sequential(nux.ActNorm(), nux.UnitGaussianPrior()), (7, 3)), (nux.ActNorm, (5, 4, 4, 2))],
)
@pytest.mark.parametrize("value", [jnp.nan, jnp.inf, -jnp.inf])
def test_init_refuses_non_finite_data(make, shape, value):
    x = jr.normal(jr.key(0), shape)
    where = (4,) + (1,) * (len(shape) - 1)
    bad = x.at[where].set(value).at[(6 % shape[0],) + (0,) * (len(shape) - 1)].set(value)
    msg = rf"nux_eqx.init: `x_batch` holds 2 non-finite values.*example {min(4, 6 % shape[0])}: {value}"
    with pytest.raises(ValueError, match=msg):
        nux.init(make(), bad, key=jr.key(1))
    with pytest.raises(ValueError, match="holds no examples"):
        nux.init(make(), x[:0], key=jr.key(1))
    # under tracing the values are unknown: init traces (the docstring says so)
    skeleton = eqx.filter_eval_shape(nux.init, make(), bad, key=jr.key(1))
    assert skeleton.is_initialised


def test_init_refuses_non_finite_cond():
    x = jr.normal(jr.key(0), (6, 4))
    cond = {"c": jr.normal(jr.key(1), (6, 2)).at[3, 1].set(jnp.nan)}
    with pytest.raises(ValueError, match=r"`cond\['c'\]` holds 1 non-finite.*example 3: nan"):
        nux.init(nux.ConditionedCoupling(hidden_layer_sizes=(8,)), x, key=jr.key(2), cond=cond)


def test_fit_shares_the_data_check():
    from nux_eqx.train import fit

    x = jr.normal(jr.key(0), (16, 3)).at[9, 2].set(jnp.inf)
    with pytest.raises(ValueError, match=r"fit: `data` holds 1 non-finite.*example 9: inf at index \(2,\)"):
        fit(nux.Sequential(nux.ActNorm(), nux.UnitGaussianPrior()), x, key=jr.key(0), steps=1, batch_size=4)


# ---- 3. a layer declared bijective must keep the number of elements ------------------------


class _Doubling(nux.AbstractBijection):
    """Declared bijective, but its output has twice as many elements as its input."""

    def transform(self, x: Array, reverse: bool, *, key, cond):
        if reverse:
            return x[: x.shape[0] // 2], jnp.zeros(())
        return jnp.concatenate([x, x]), jnp.zeros(())


class _Dropping(nux.AbstractBijection):
    def transform(self, x: Array, reverse: bool, *, key, cond):
        return x[..., :-1], jnp.zeros(())


@pytest.mark.parametrize(
    "layer, shape, got",
    [
        (_Doubling(), (5, 3), r"\(3,\) \(3 elements\) to an output of shape \(6,\) \(6 elements\)"),
        (_Dropping(), (5, 2, 4), r"\(2, 4\) \(8 elements\) to an output of shape \(2, 3\) \(6 elements\)"),
    ],
)
def test_init_refuses_bijection_that_changes_size(layer, shape, got):
    flow = nux.Sequential(nux.ActNorm(), layer, nux.UnitGaussianPrior())
    name = type(layer).__name__
    with pytest.raises(nux.ShapeError, match=rf"^{name} is an AbstractBijection but maps.*{got}"):
        nux.init(flow, jr.normal(jr.key(0), shape), key=jr.key(1))


# ---- 4. a key that is not one PRNG key gets the framework's message -------------------------


@pytest.fixture(scope="module")
def small_flow():
    x = jr.normal(jr.key(1), (8, 3))
    return nux.init(nux.Sequential(nux.ActNorm(), nux.UnitGaussianPrior()), x, key=jr.key(2))


@pytest.mark.parametrize("bad", [0, 1.5, "seed", jnp.zeros(3)])
def test_bad_key_gets_framework_message(small_flow, bad):
    x = jnp.zeros(3)
    msg = r"`key` must be one PRNG key, such as `jax.random.key\(0\)`"
    with pytest.raises(TypeError, match="^Sequential: " + msg):
        small_flow(x, key=bad)
    with pytest.raises(TypeError, match="^nux_eqx.sample: " + msg):
        nux.sample(small_flow, bad)
    with pytest.raises(TypeError, match="^nux_eqx.init: " + msg):
        nux.init(nux.ActNorm(), jnp.ones((4, 3)), key=bad)
    with pytest.raises(TypeError, match="^fit: " + msg):
        nux.train.fit(nux.ActNorm(), jnp.ones((4, 3)), key=bad, steps=1, batch_size=2)
    with pytest.raises(TypeError, match="^UniformDequantization: " + msg):
        nux.init(nux.UniformDequantization(scale=4.0), jnp.ones((4, 3)), key=jr.key(0))(x, key=bad)


def test_batch_of_keys_says_split_per_example(small_flow):
    keys = jr.split(jr.key(0), 4)
    with pytest.raises(TypeError, match=r"got an array of 4 keys.*"):
        small_flow(jnp.zeros(3), key=keys)
    with pytest.raises(TypeError, match=r"split one key per example under jax.vmap"):
        jax.jit(lambda k: small_flow(jnp.zeros(3), key=k))(keys)
    # one key, typed or raw, is fine, also per example under vmap
    small_flow(jnp.zeros(3), key=jr.PRNGKey(0))
    jax.vmap(lambda k: nux.sample(small_flow, k))(keys)


# ---- 5. temperature -------------------------------------------------------------------------


@pytest.mark.parametrize("t", [-1.0, -1e-3, float("nan"), float("inf"), -float("inf")])
def test_sample_refuses_bad_temperature(small_flow, t):
    with pytest.raises(ValueError, match="`temperature` must be a finite number >= 0"):
        nux.sample(small_flow, jr.key(0), temperature=t)
    with pytest.raises(Exception, match="`temperature` must be a finite number >= 0"):
        eqx.filter_jit(lambda t: nux.sample(small_flow, jr.key(0), temperature=t))(jnp.asarray(t))


def test_sample_zero_temperature_is_the_mode(small_flow):
    x, _ = nux.sample(small_flow, jr.key(0), temperature=0.0)
    z, _ = small_flow(x)
    assert jnp.allclose(z, 0.0, atol=1e-5)


# ---- 6. NuX's ChainRule(2, factor=True) ------------------------------------------------------


@pytest.mark.parametrize("kwargs", [dict(factor=True), dict(factor=False), {}])
def test_nux_chain_rule_spelling_points_to_multi_scale(kwargs):
    with pytest.raises(TypeError, match=r"split-prior container.*multi_scale.*Factored"):
        nux.ChainRule(2, **kwargs)
    with pytest.raises(TypeError, match=r"split-prior container"):
        nux.ChainRule(nux.Identity(), **kwargs)


# ---- 7. init only the layers that are not initialised yet ------------------------------------


def test_only_uninitialised_after_swapping_the_prior():
    import optax

    small = dict(hidden_layer_sizes=(8,))
    x = 2.0 + 3.0 * jr.normal(jr.key(0), (64, 4))
    flow = nux.init(
        nux.Sequential(
            nux.ActNorm(),
            nux.Repeat(nux.Sequential(nux.Coupling(**small), nux.Reverse()), 2),
            nux.UnitGaussianPrior(),
        ),
        x,
        key=jr.key(1),
    )
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss = lambda p: -jnp.mean(jax.vmap(eqx.combine(p, static))(x)[1])  # noqa: E731
        g = jax.grad(loss)(params)
        updates, state = opt.update(g, state)
        return optax.apply_updates(params, updates), state

    for _ in range(3):
        params, state = step(params, state)
    trained = eqx.combine(params, static)
    # swap the prior for a new, uninitialised, data-dependent head
    swapped = eqx.tree_at(
        lambda f: f.layers[-1], trained, nux.Sequential(nux.ActNorm(), nux.DiagGaussianPrior())
    )
    new = nux.init(swapped, x, key=jr.key(5), only_uninitialised=True)

    for a, b in zip(jax.tree.leaves(trained.layers[:-1]), jax.tree.leaves(new.layers[:-1])):
        assert a.dtype == b.dtype and jnp.array_equal(a, b)  # bit-identical
    head = new.layers[-1]
    assert head.is_initialised and head.layers[0].is_initialised
    # the new ActNorm saw the batch as it arrives after the TRAINED layers
    h = jax.vmap(lambda v: trained.layers[1](trained.layers[0](v)[0])[0])(x)
    z = jax.vmap(lambda v: head.layers[0](v)[0])(h)
    assert jnp.allclose(z.mean(0), 0.0, atol=1e-4) and jnp.allclose(z.std(0), 1.0, atol=1e-3)
    assert jnp.all(jnp.isfinite(jax.vmap(lambda v: nux.log_prob(new, v))(x)))
    # without the keyword every layer is re-initialised
    fresh = nux.init(swapped, x, key=jr.key(5))
    assert not jnp.array_equal(fresh.layers[0].b, trained.layers[0].b)
    # a kept layer must get the shape it was initialised for
    with pytest.raises(
        nux.ShapeError, match="only_uninitialised=True.*ActNorm is initialised for inputs of shape"
    ):
        nux.init(swapped, jnp.ones((4, 5)), key=jr.key(5), only_uninitialised=True)
