"""Layer kinds are base classes (Equinox's abstract/final pattern), and one class-level
declaration says which direction needs a key."""

import inspect
from typing import ClassVar

import jax.numpy as jnp
import jax.random as jr
import pytest

import nux_eqx as nux

KINDS = (
    nux.AbstractBijection,
    nux.AbstractInjective,
    nux.AbstractSurjective,
    nux.AbstractPrior,
    nux.AbstractContainer,
)


def _all_flow_classes():
    out, todo = set(), [nux.AbstractFlow]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("nux_eqx") and sub not in out:
                out.add(sub)
                todo.append(sub)
    return out


def test_every_concrete_flow_has_exactly_one_kind_and_is_final():
    classes = _all_flow_classes()
    concrete = [c for c in classes if not c.__name__.startswith("Abstract")]
    assert len(concrete) > 50
    for cls in concrete:
        assert not inspect.isabstract(cls), cls
        kinds = [k for k in KINDS if issubclass(cls, k)]
        assert len(kinds) == 1, (cls, kinds)
        assert not cls.__subclasses__(), f"{cls.__name__} is subclassed"
        for base in cls.__mro__[1:]:
            if issubclass(base, nux.AbstractFlow):
                assert base.__name__.startswith("Abstract"), (cls, base)


def test_kind_of_some_layers():
    assert isinstance(nux.Coupling(), nux.AbstractBijection)
    assert isinstance(nux.TallAffineDiagCov(2), nux.AbstractInjective)
    assert isinstance(nux.UniformDequantization(), nux.AbstractSurjective)
    assert isinstance(nux.Padding(2), nux.AbstractSurjective)
    assert isinstance(nux.MaxPool(), nux.AbstractSurjective)
    assert isinstance(nux.UnitGaussianPrior(), nux.AbstractPrior)
    assert isinstance(nux.Sequential(nux.Identity()), nux.AbstractContainer)
    assert isinstance(
        nux.ImportanceWeighted(nux.TallAffineDiagCov(2), nux.UnitGaussianPrior()), nux.AbstractContainer
    )
    for k in KINDS:
        assert issubclass(k, nux.AbstractFlow)


def test_old_style_layer_kind_is_refused_with_the_base_to_use():
    with pytest.raises(TypeError, match=r"layer_kind = 'bijective'.*nux_eqx.AbstractBijection"):

        class OldBijective(nux.AbstractFlow):
            layer_kind: ClassVar[str] = "bijective"

            def transform(self, x, reverse, *, key, cond):
                return x, jnp.zeros(())

    with pytest.raises(TypeError, match=r"AbstractSurjective"):

        class OldStochastic(nux.AbstractFlow):
            layer_kind: ClassVar[str] = "stochastic"

    with pytest.raises(TypeError, match=r"forward_needs_key"):

        class OldKey(nux.AbstractSurjective):
            needs_key: ClassVar[bool] = True


def test_a_flow_without_a_kind_is_refused():
    with pytest.raises(TypeError, match="without a kind"):

        class NoKind(nux.AbstractFlow):
            def transform(self, x, reverse, *, key, cond):
                return x, jnp.zeros(())

            def init_and_push(self, x_batch, *, key, cond=None):
                return self, x_batch


def test_concrete_layers_are_final():
    with pytest.raises(TypeError, match="concrete flow ActNorm.*final"):

        class MyActNorm(nux.ActNorm):
            pass

    with pytest.raises(TypeError, match="concrete flow Sequential"):

        class MySequential(nux.Sequential):
            pass


def test_final_methods_cannot_be_overridden():
    with pytest.raises(TypeError, match=r"overrides `AbstractFlow.__call__`"):

        class Call(nux.AbstractBijection):
            def transform(self, x, reverse, *, key, cond):
                return x, jnp.zeros(())

            def __call__(self, x, reverse=False, *, key=None, cond=None):
                return x, jnp.zeros(())

    with pytest.raises(TypeError, match=r"overrides `AbstractLayer.init_and_push`"):

        class Push(nux.AbstractBijection):
            def transform(self, x, reverse, *, key, cond):
                return x, jnp.zeros(())

            def init_and_push(self, x_batch, *, key, cond=None):
                return self, x_batch


class _ForwardNoise(nux.AbstractSurjective):
    forward_needs_key: ClassVar[bool] = True

    def transform(self, x, reverse, *, key, cond):
        if reverse:
            return jnp.floor(x), jnp.zeros((), x.dtype)
        return x + jr.uniform(key, x.shape, x.dtype), jnp.zeros((), x.dtype)


class _ReverseNoise(nux.AbstractSurjective):
    reverse_needs_key: ClassVar[bool] = True

    def transform(self, x, reverse, *, key, cond):
        if reverse:
            return x + jr.normal(key, x.shape, x.dtype), jnp.zeros((), x.dtype)
        return x, jnp.zeros((), x.dtype)


def test_one_key_mechanism_for_both_directions():
    x = jnp.ones((4, 3))
    fwd = nux.init(_ForwardNoise(), x, key=jr.key(0))
    rev = nux.init(_ReverseNoise(), x, key=jr.key(0))
    with pytest.raises(ValueError, match="_ForwardNoise is stochastic and needs a PRNG key"):
        fwd(x[0])
    fwd(x[0], True)  # the reverse direction is deterministic
    with pytest.raises(ValueError, match="_ReverseNoise samples the values .* needs a PRNG key"):
        rev(x[0], True)
    rev(x[0])
    rev(x[0], True, key=jr.key(1))
    # the library's layers use the same declaration
    for layer, direction in [
        (nux.UniformDequantization(), "forward"),
        (nux.Padding(1), "forward"),
        (nux.VariationalDequantization(), "forward"),
        (nux.Slice(1), "reverse"),
        (nux.Abs(), "reverse"),
        (nux.Sort(), "reverse"),
        (nux.MaxPool(), "reverse"),
    ]:
        assert type(layer).forward_needs_key == (direction == "forward"), layer
        assert type(layer).reverse_needs_key == (direction == "reverse"), layer
    slc = nux.init(nux.Slice(1), jnp.ones((4, 3)), key=jr.key(0))
    with pytest.raises(ValueError, match="Slice samples the values"):
        slc(jnp.ones(1), True)


def test_check_flow_dispatches_on_the_base_class():
    # A layer that is wrong only as a bijection: declared a bijection, check_flow finds it;
    # declared stochastic, the bijective checks do not apply.
    class NotInvertible(nux.AbstractBijection):
        def transform(self, x, reverse, *, key, cond):
            return 2 * x if not reverse else x, jnp.zeros((), x.dtype)

    class NotInvertibleStochastic(nux.AbstractSurjective):
        def transform(self, x, reverse, *, key, cond):
            return 2 * x if not reverse else x, jnp.zeros((), x.dtype)

    x = jr.normal(jr.key(0), (4, 2))
    with pytest.raises(AssertionError, match=r"reverse\(forward\(x\)\) == x"):
        nux.testing.check_flow(NotInvertible(), x, key=jr.key(1), scramble_params=False)
    nux.testing.check_flow(NotInvertibleStochastic(), x, key=jr.key(1), scramble_params=False)


def test_sampling_needs_a_prior_and_says_so():
    x = jnp.ones((4, 2))
    flow = nux.init(nux.Sequential(nux.Identity(), nux.Reverse()), x, key=jr.key(0))
    assert not flow.can_sample()
    with pytest.raises(TypeError, match="cannot start a sample"):
        nux.sample(flow, jr.key(0))
    inv = nux.init(nux.Invert(nux.Identity()), x, key=jr.key(0))
    assert not inv.can_sample()
    with pytest.raises(TypeError, match="cannot start a sample"):
        nux.sample(inv, jr.key(0))
    assert nux.init(nux.Sequential(nux.Identity(), nux.UnitGaussianPrior()), x, key=jr.key(0)).can_sample()
