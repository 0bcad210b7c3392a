"""The flow contract: `AbstractFlow`, `init`, `log_prob`, `sample`, `capture`.

Every layer and container of nux_eqx is an `AbstractFlow`. A flow acts on ONE
example; users batch with `jax.vmap`. The public `__call__` lives here, in the base
class: it runs the framework's own checks (initialised? recorded shape? key? cond?)
before dispatching to the layer's typed `transform`, which is checked by jaxtyping and
beartype when traced.
"""

import abc
import copy
import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from beartype import beartype
from jaxtyping import Array, PRNGKeyArray, PyTree, Shaped, jaxtyped

from ._compile import auto_compiler_options, filter_jit_with
from ._context import CAPTURE_PATH, CHECK_FINITE, LOOP_BODY, ONLY_UNINITIALISED, RECORDER, set_flag
from ._maths import batch_keys, keyed_vmap


class NotInitialisedError(RuntimeError):
    """Raised when a flow whose shapes and parameters are not yet known is called."""


class ShapeError(ValueError):
    """Raised when a flow gets an input of the wrong shape (or a batch)."""


class NonTrainable(eqx.Module):
    """Marks an array that belongs to a flow but must not be trained.

    `check_flow`, [`nux_eqx.trainable`][] and the training loop skip it, and layers read
    it through `.get()`, which stops gradients.

    **Arguments:**

    - `value`: the wrapped array.
    """

    value: Array

    def get(self) -> Array:
        """**Returns:** the wrapped value with gradients stopped."""
        return jax.lax.stop_gradient(self.value)


def _is_nontrainable(x: Any) -> bool:
    return isinstance(x, NonTrainable)


def trainable(flow: PyTree) -> tuple[PyTree, PyTree]:
    """Split a flow into its trainable arrays and everything else.

    **Arguments:**

    - `flow`: any pytree, usually an initialised flow.

    **Returns:**

    `(params, static)` as `eqx.partition` gives them: `params` holds every inexact
    array that is not inside a [`nux_eqx.NonTrainable`][]; `eqx.combine(params, static)`
    rebuilds the flow.
    """
    return eqx.partition(flow, eqx.is_inexact_array, is_leaf=_is_nontrainable)


# --------------------------------------------------------------------------------------
# Capture: record every leaf layer's input, output and contribution (NuX's
# `capture_names`). Purely trace-time Python; the recorded values are returned as
# ordinary outputs, so `capture` composes with `jax.vmap` and `jax.jit`.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Record:
    path: str
    layer: "AbstractFlow"
    reverse: bool
    x: Any
    key: Any
    cond: Any
    z: Any
    contribution: Any


def _finite_or_raise(a: Array, message: str) -> Array:
    return eqx.error_if(a, ~jnp.all(jnp.isfinite(a)), message)


class Captured(eqx.Module):
    """What one leaf layer saw and did during a [`nux_eqx.capture`][].

    **Fields:** `x` (its input), `z` (its output), `contribution` (its log-likelihood
    contribution), `reverse` (the direction it ran in; static), `layer` (the layer's
    class name, such as `"Coupling"`; static)."""

    x: Array
    z: Array
    contribution: Array
    reverse: bool = eqx.field(static=True)
    layer: str = eqx.field(static=True, default="")


def capture(
    flow: "AbstractFlow",
    x: Array,
    reverse: bool = False,
    *,
    key: PRNGKeyArray | None = None,
    cond: PyTree = None,
) -> tuple[Array, Array, dict[str, Captured]]:
    """Run a flow on one example and record what every leaf layer did.

    This is NuX's `capture_names`: use it for debugging, or to read the per-scale
    latents of a multiscale flow. It composes with `jax.vmap` and `jax.jit`.

    **Arguments:**

    - `flow`: an initialised flow.
    - `x`: one example.
    - `reverse`: the direction to run in.
    - `key`, `cond`: as for the flow's `__call__`.

    **Returns:**

    `(z, contribution, records)`, where `records` maps each leaf's path inside the
    flow (such as `"layers[2].flow"`) to a [`nux_eqx.Captured`][], in call order; its
    `layer` names the layer's class.

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (32, 3))
        flow = nux.init(nux.Sequential(nux.ActNorm(), nux.Reverse(), nux.UnitGaussianPrior()),
                        x, key=jax.random.key(1))
        z, log_px, records = nux.capture(flow, x[0])
        for path, r in records.items():
            print(path, r.layer, r.x.shape, "->", r.z.shape)
        # layers[0] ActNorm (3,) -> (3,)
        # layers[1] Reverse (3,) -> (3,)
        # layers[2] UnitGaussianPrior (3,) -> (3,)
        assert [r.layer for r in records.values()] == ["ActNorm", "Reverse", "UnitGaussianPrior"]
        ```
    """
    records = capture_records(flow, x, reverse, key=key, cond=cond)
    z, c, recs = records
    out: dict[str, Captured] = {}
    for r in recs:
        name = r.path or type(r.layer).__name__
        base, i = name, 1
        while name in out:  # the same child called twice
            i += 1
            name = f"{base}#{i}"
        out[name] = Captured(r.x, r.z, r.contribution, r.reverse, type(r.layer).__name__)
    return z, c, out


def capture_records(flow, x, reverse, *, key, cond):
    records: list[_Record] = []
    with set_flag(RECORDER, records), set_flag(CAPTURE_PATH, ""):
        z, c = flow(x, reverse, key=key, cond=cond)
    return z, c, records


# --------------------------------------------------------------------------------------
# The base class.
# --------------------------------------------------------------------------------------


@functools.cache
def _typed_transform(cls: type) -> Callable:
    return jaxtyped(typechecker=beartype)(cls.transform)


def _fmt(shape: tuple[int, ...] | None) -> str:
    return (
        "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")
        if shape is not None
        else "?"
    )


_OLD_KINDS = {
    "bijective": "AbstractBijection",
    "injective": "AbstractInjective",
    "surjective": "AbstractSurjective",
    "stochastic": "AbstractSurjective",
    "prior": "AbstractPrior",
    "container": "AbstractContainer",
}
_KIND_NAMES = "AbstractBijection, AbstractInjective, AbstractSurjective, AbstractPrior or AbstractContainer"


def _check_subclass(cls: type) -> None:
    """Class-definition checks of the abstract/final pattern, with messages that say what
    to do instead."""
    name = cls.__name__
    if "layer_kind" in cls.__dict__:
        old = cls.__dict__["layer_kind"]
        base = _OLD_KINDS.get(old, _KIND_NAMES)
        raise TypeError(
            f"{name} declares `layer_kind = {old!r}`, which nux_eqx no longer reads: a layer's kind "
            f"is its base class. Subclass `nux_eqx.{base}` instead of `nux_eqx.AbstractFlow` and "
            "delete `layer_kind`."
        )
    if "needs_key" in cls.__dict__:
        raise TypeError(
            f"{name} declares `needs_key`, which nux_eqx no longer reads: declare "
            "`forward_needs_key = True` and/or `reverse_needs_key = True` instead."
        )
    flow_bases = [b for b in cls.__mro__[1:] if issubclass(b, AbstractFlow)]
    for attr, value in cls.__dict__.items():
        if not (inspect.isfunction(value) or isinstance(value, property)):
            continue
        if (attr.startswith("__") and attr != "__call__") or attr == "init":
            continue
        for base in flow_bases:
            if attr in base.__dict__:
                inherited = base.__dict__[attr]
                # class-level settings (such as `check_tolerance`) may be given by a property
                overridable = not (inspect.isfunction(inherited) or isinstance(inherited, property))
                if not overridable and not getattr(inherited, "__isabstractmethod__", False):
                    raise TypeError(
                        f"{name} overrides `{base.__name__}.{attr}`, which is final: a layer "
                        "implements only the abstract methods of its kind (and the `init` hook)."
                    )
                break
    if name.startswith("Abstract"):
        return
    for base in flow_bases:
        if not base.__name__.startswith("Abstract"):
            raise TypeError(
                f"{name} subclasses the concrete flow {base.__name__}; concrete nux_eqx flows "
                f"are final. Hold a {base.__name__} as a field (compose) or subclass an abstract "
                f"base ({_KIND_NAMES})."
            )
    if not issubclass(cls, _KINDS):  # defined below, after the kinds
        raise TypeError(
            f"{name} subclasses AbstractFlow without a kind: subclass one of {_KIND_NAMES} "
            "(which checks `check_flow` applies depends on it)."
        )


class AbstractFlow(eqx.Module):
    """Base class of every flow layer and container.

    A flow maps ONE example `x` (data side) to `z` (latent side). Calling it returns
    `(z, contribution)`, where `contribution` is the layer's term of `log p(x)`:
    `log|det dz/dx|` for a bijection (the same value in both directions, as in NuX),
    `log p(z)` for a prior, and the bound terms for stochastic layers.

    A layer's kind is its base class (Equinox's abstract/final pattern): subclass one of
    [`nux_eqx.AbstractBijection`][], [`nux_eqx.AbstractInjective`][],
    [`nux_eqx.AbstractSurjective`][], [`nux_eqx.AbstractPrior`][] (leaf layers, all
    [`nux_eqx.AbstractLayer`][]s) or [`nux_eqx.AbstractContainer`][], and implement its
    abstract methods (`transform`, typed with jaxtyping annotations, and the kind's own).
    Concrete layers are final: they are not subclassed, and they override only abstract
    methods and the `init` hook of a leaf layer. Do not override `__call__`: it checks the
    input first.
    """

    # Recorded by `nux_eqx.init`: the unbatched input and output shapes.
    _in_shape: tuple[int, ...] | None = eqx.field(static=True, default=None, kw_only=True, repr=False)
    _out_shape: tuple[int, ...] | None = eqx.field(static=True, default=None, kw_only=True, repr=False)

    forward_needs_key: ClassVar[bool] = False
    """Whether the forward direction (data -> latent) draws random numbers, so that
    `__call__` refuses to run it without a `key` (dequantisation, padding)."""
    reverse_needs_key: ClassVar[bool] = False
    """Whether the reverse direction (latent -> data) draws random numbers, so that
    `__call__` refuses to run it without a `key` (SurVAE's inference surjections)."""
    needs_cond: ClassVar[bool] = False
    """Whether the layer always needs a `cond`."""
    eager_init: ClassVar[bool] = False
    """Whether the layer's `init` hook reads the VALUES of its batch in Python (a check on
    concrete data, say). `nux_eqx.init` called outside `jit` compiles each other layer's
    init as one cached program, where values are abstract; such a layer's init runs op by
    op instead. (A hook that fails on abstract values is rerun op by op anyway.)"""
    check_tolerance: ClassVar[float | None] = None
    """The relative tolerance `check_flow` grants this layer, for layers whose inverse or
    log-determinant is numerical (an ODE solve, a fixed-point iteration): `check_flow`
    loosens each of its comparisons to at least this value. `None` (the default) for
    layers exact to float precision. A layer may compute it from its settings with a
    property (`ContinuousFlow` gives `100 * max(rtol, atol)`)."""

    def __check_init__(self) -> None:
        # Equinox flattens a Module whose instance `__dict__` has fewer entries than it
        # has fields as a *function wrapper*: unflattening then stores `__name__`,
        # `__qualname__`, ... as `Missing` on the instance, and `eqx.filter_jit(flow)` /
        # `eqx.filter_vmap(flow)` fail with "__name__ must be set to a string object". A
        # custom `__init__` that leaves a defaulted field (such as the recorded shapes) at
        # its class-level default is exactly such a Module, so store every field on the
        # instance; flatten/unflatten round trips then keep the `__dict__` complete.
        for f in dataclasses.fields(self):
            if f.name not in self.__dict__:
                object.__setattr__(self, f.name, getattr(self, f.name))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _check_subclass(cls)

    # ---- what a flow implements ---------------------------------------------------

    @abc.abstractmethod
    def transform(
        self,
        x: Array,
        reverse: bool,
        *,
        key: PRNGKeyArray | None,
        cond: PyTree,
    ) -> tuple[Array, Shaped[Array, ""]]:
        """Run the flow on one example, after the framework's checks.

        **Arguments:**

        - `x`: one example, of the recorded input shape (output shape when `reverse`).
        - `reverse`: `False` for data -> latent, `True` for latent -> data.
        - `key`: a PRNG key or `None` (never `None` in a direction that declares
          `forward_needs_key` / `reverse_needs_key`).
        - `cond`: the conditioning pytree or `None`.

        **Returns:**

        `(z, contribution)`, with `contribution` a scalar.
        """

    @abc.abstractmethod
    def init_and_push(
        self, x_batch: Array, *, key: PRNGKeyArray, cond: PyTree = None
    ) -> tuple["AbstractFlow", Array]:
        """Initialise this flow on a batch and push the batch through it.

        Leaf layers ([`nux_eqx.AbstractLayer`][]) run their `init` hook, record their
        shapes and apply themselves to the batch with `jax.vmap`; containers walk their
        children, so each child sees the batch as it arrives there. Called by
        [`nux_eqx.init`][].

        **Returns:** `(initialised_flow, output_batch)`.
        """

    # ---- the framework ------------------------------------------------------------

    @property
    def in_shape(self) -> tuple[int, ...] | None:
        """The unbatched input (data-side) shape, recorded by `nux_eqx.init`."""
        return self._in_shape

    @property
    def out_shape(self) -> tuple[int, ...] | None:
        """The unbatched output (latent-side) shape, recorded by `nux_eqx.init`."""
        return self._out_shape

    @property
    def is_initialised(self) -> bool:
        """Whether `nux_eqx.init` has run on this flow."""
        return self._in_shape is not None and self._out_shape is not None

    def can_sample(self) -> bool:
        """Whether this flow can start a sample: a prior can; a container can when the
        children it samples through can; other layers cannot."""
        if isinstance(self, AbstractPrior):
            return True
        if isinstance(self, AbstractContainer):
            return self.children_can_sample()
        return False

    def __call__(
        self,
        x: Any,
        reverse: bool = False,
        *,
        key: PRNGKeyArray | None = None,
        cond: PyTree = None,
    ) -> tuple[Array, Array]:
        """Run the flow on ONE example.

        **Arguments:**

        - `x`: one example (unbatched). Batch with `jax.vmap`.
        - `reverse`: `False` (data -> latent) or `True` (latent -> data). A Python bool.
        - `key`: a PRNG key, needed by stochastic layers such as dequantisation.
        - `cond`: conditioning passed to every conditional layer.

        **Returns:**

        `(z, contribution)`: the transformed example and this flow's scalar
        contribution to `log p(x)`.
        """
        x = check_input(self, x, reverse)
        if not isinstance(reverse, bool):
            raise TypeError(
                f"{type(self).__name__}: `reverse` must be a Python bool, got {type(reverse).__name__}; "
                "under `jax.jit` mark it static (or use `eqx.filter_jit`)."
            )
        if key is not None:
            check_key(type(self).__name__, key)
        _require_key(self, key, reverse)
        if cond is None and type(self).needs_cond:
            raise ValueError(f"{type(self).__name__} is conditional and needs `cond=`; it got none.")
        leaf = not isinstance(self, AbstractContainer)
        checking = CHECK_FINITE.get()
        if checking:
            x = _finite_or_raise(
                x,
                f"{type(self).__name__} received NaN or inf in its input ({'reverse' if reverse else 'forward'}).",
            )
        z, contribution = _typed_transform(type(self))(self, x, reverse, key=key, cond=cond)
        contribution = jnp.asarray(contribution)
        if checking and leaf:
            z = _finite_or_raise(
                z,
                f"{type(self).__name__} produced NaN or inf from a finite input ({'reverse' if reverse else 'forward'}).",
            )
            contribution = _finite_or_raise(
                contribution,
                f"{type(self).__name__} produced a NaN or inf contribution ({'reverse' if reverse else 'forward'}).",
            )
        if contribution.shape != ():
            raise ShapeError(
                f"{type(self).__name__}.transform must return a scalar contribution, "
                f"got shape {contribution.shape}."
            )
        recorder = RECORDER.get()
        if recorder is not None and leaf:
            recorder.append(_Record(CAPTURE_PATH.get(), self, reverse, x, key, cond, z, contribution))
        return z, contribution


# --------------------------------------------------------------------------------------
# The kinds.
# --------------------------------------------------------------------------------------


class AbstractLayer(AbstractFlow):
    """A leaf flow (no children): the common base of the four layer kinds.

    `nux_eqx.init` runs the layer's `init` hook on the batch arriving at it, records its
    shapes and pushes the batch through it. Subclass one of its kinds, not this class.
    """

    def init(self, x_batch: Array, *, key: PRNGKeyArray, cond: PyTree = None) -> "AbstractLayer":
        """Hook: fill the layer's parameters from a batch (one leading batch axis).

        Shape-only layers read `x_batch.shape[1:]`; data-dependent ones such as
        `ActNorm` use batch statistics. Build the filled layer with `eqx.tree_at`
        (`is_leaf=lambda v: v is None` for empty fields). The default does nothing; it
        is the one concrete method a layer may override.

        **Arguments:**

        - `x_batch`: the data as it arrives at this layer, with one leading batch axis.
        - `key`: a PRNG key for random initialisation.
        - `cond`: the batched conditioning, or `None`.

        **Returns:**

        The layer with its parameters filled.
        """
        return self

    def init_and_push(self, x_batch, *, key, cond=None):
        hook_key, push_key = jr.split(key)
        in_shape = tuple(x_batch.shape[1:])
        if ONLY_UNINITIALISED.get() and self.is_initialised:
            _check_kept_shape(self, in_shape)
            return self, push(self, x_batch, key=push_key, cond=cond)
        compiled = None
        if not self.eager_init and RECORDER.get() is None and compile_here(self, x_batch, key, cond):
            # called outside any trace: compile this layer's init and push as one program,
            # cached by the layer's structure and shapes (repeated blocks compile once).
            # Op-by-op it held ~0.6 GB of per-op buffers for a conv Glow, and one program
            # for the whole flow compiles to a higher peak than its layers one by one.
            flags = (CHECK_FINITE.get(), LOOP_BODY.get(), ONLY_UNINITIALISED.get())
            try:
                # compiled with `"auto"` options: lean on CPU for images (init's peak for
                # the digits Glow 463 -> 408 MB)
                opts = auto_compiler_options(jnp.ndim(x_batch) - 1)
                compiled = filter_jit_with(_fill_and_push_flags, opts)(
                    self, x_batch, hook_key, push_key, cond, flags
                )
            except jax.errors.ConcretizationTypeError:
                compiled = None  # the hook needs concrete values: run it op by op
        if compiled is None:
            compiled = _fill_and_push(self, x_batch, hook_key, push_key, cond)
        filled, z_batch = compiled
        out_shape = tuple(z_batch.shape[1:])
        if isinstance(self, AbstractBijection) and np.prod(in_shape) != np.prod(out_shape):
            raise ShapeError(
                f"{type(self).__name__} is an AbstractBijection but maps an "
                f"input of shape {_fmt(in_shape)} ({int(np.prod(in_shape))} elements) to an output of "
                f"shape {_fmt(out_shape)} ({int(np.prod(out_shape))} elements); a bijection keeps the "
                "number of elements. Subclass AbstractInjective or AbstractSurjective for a layer that "
                "changes the size."
            )
        return with_shapes(filled, in_shape, out_shape), z_batch


class AbstractBijection(AbstractLayer):
    """A bijective layer: `x -> z` is invertible and differentiable, and the contribution
    is `log|det dz/dx|`, the same value in both directions.

    `check_flow` checks `reverse(forward(x)) == x`, equal contributions both ways and the
    contribution against the brute-force `log|det J|` of `jax.jacobian` (float64)."""


class AbstractInjective(AbstractLayer):
    """An injective layer: a deterministic map between spaces of different dimension
    (without a key, for the noisy injective flows), with the contribution
    `±0.5 log det(JᵀJ)` of the tall Jacobian `J` of the map from the lower- to the
    higher-dimensional side.

    `check_flow` checks that low -> high -> low round-trips and the contribution against
    the brute-force Jacobian term (float64)."""


class AbstractSurjective(AbstractLayer):
    """A stochastic layer: one direction draws random numbers and the contribution is a
    bound term (dequantisation, augmentation) or the exact `log p(x | z)` of a SurVAE
    inference surjection.

    Declare the direction that needs a key with `forward_needs_key = True` (dequantisation,
    padding: the forward pass draws the noise) or `reverse_needs_key = True` (inference
    surjections: reverse samples what forward discarded); `__call__` raises a clear error
    when it is missing. `check_flow` runs the layer with keys and checks that the outputs
    and contributions are finite and the same key gives the same result."""


class AbstractPrior(AbstractLayer):
    """A prior: the latent end of a flow. Its contribution is the normalised log-density
    `log p(z)`; it can draw samples.

    `check_flow` checks a finite log-density, samples of the right shape whose `log_q`
    equals the forward density, and (up to 2 dimensions) a Monte-Carlo integral of 1."""

    @abc.abstractmethod
    def sample_and_log_prob(
        self, key: PRNGKeyArray, *, cond: PyTree = None, temperature: float = 1.0
    ) -> tuple[Array, Array]:
        """Draw one example and return it with its log-density.

        **Arguments:**

        - `key`: a PRNG key.
        - `cond`: conditioning, or `None`.
        - `temperature`: scales the noise (`z = temperature * eps` for Gaussians); the
          log-density is the untempered one.

        **Returns:** `(x, log_p(x))`.
        """


class AbstractContainer(AbstractFlow):
    """A flow made of other flows (`Sequential`, `Invert`, `Factored`, `ChainRule`,
    `Repeat`, `ImportanceWeighted`).

    `check_flow` checks each leaf layer inside by its own kind, and the whole flow for
    batching, jit and gradients. A container implements `children`, `init_and_push`,
    `children_can_sample` and `sample_and_log_prob` besides `transform`.
    """

    @abc.abstractmethod
    def children(self) -> tuple[tuple[str, AbstractFlow], ...]:
        """The `(name, child)` pairs, in call order (names as in [`nux_eqx.capture`][])."""

    @abc.abstractmethod
    def children_can_sample(self) -> bool:
        """Whether the children this container samples through can start a sample."""

    @abc.abstractmethod
    def sample_and_log_prob(
        self, key: PRNGKeyArray, *, cond: PyTree = None, temperature: float = 1.0
    ) -> tuple[Array, Array]:
        """Draw one example from the children's prior(s), run the rest in reverse, and
        return it with its log-density. See [`nux_eqx.sample`][]."""


_KINDS = (AbstractBijection, AbstractInjective, AbstractSurjective, AbstractPrior, AbstractContainer)


def cannot_sample(flow: AbstractFlow) -> TypeError:
    """The error for a flow that was asked to start a sample but has no prior."""
    return TypeError(
        f"{type(flow).__name__} cannot start a sample: a flow samples from the prior at "
        "its latent end. End it with a prior such as `UnitGaussianPrior()`."
    )


def sample_from(
    flow: AbstractFlow, key: PRNGKeyArray, *, cond: PyTree = None, temperature: float = 1.0
) -> tuple[Array, Array]:
    """`flow.sample_and_log_prob(...)` for a flow that can sample; a clear error otherwise."""
    if not flow.can_sample():
        raise cannot_sample(flow)
    return flow.sample_and_log_prob(key, cond=cond, temperature=temperature)


def _require_key(flow: AbstractFlow, key: Any, reverse: bool) -> None:
    if key is not None:
        return
    name = type(flow).__name__
    if reverse and type(flow).reverse_needs_key:
        raise ValueError(
            f"{name} samples the values its forward pass discarded when run in reverse, so the "
            "reverse direction needs a PRNG key: call it as `flow(z, True, key=jax.random.key(0))`, "
            "or use `nux_eqx.sample(flow, key)`."
        )
    if not reverse and type(flow).forward_needs_key:
        raise ValueError(
            f"{name} is stochastic and needs a PRNG key: call it as "
            "`flow(x, key=jax.random.key(0))` (split one key per example under jax.vmap)."
        )


def _fill_and_push(layer, x_batch, hook_key, push_key, cond):
    """A leaf layer's `init` hook on the batch, then the batch pushed through the filled layer."""
    filled = layer.init(x_batch, key=hook_key, cond=cond)
    if not isinstance(filled, type(layer)):
        raise TypeError(
            f"{type(layer).__name__}.init must return a {type(layer).__name__}, got {type(filled).__name__}."
        )
    filled = with_shapes(filled, tuple(x_batch.shape[1:]), None)
    return filled, push(filled, x_batch, key=push_key, cond=cond)


def _fill_and_push_flags(layer, x_batch, hook_key, push_key, cond, flags):
    # the trace-time flags are an argument (static: part of the cache key), set again inside
    check_finite, loop_body, only_uninitialised = flags
    with set_flag(CHECK_FINITE, check_finite), set_flag(LOOP_BODY, loop_body):
        with set_flag(ONLY_UNINITIALISED, only_uninitialised):
            return _fill_and_push(layer, x_batch, hook_key, push_key, cond)


def not_traced(*trees: Any) -> bool:
    """Whether no leaf of `trees` is a tracer (so the caller is not being traced)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def hashable_statics(layer: AbstractFlow) -> bool:
    """Whether `eqx.filter_jit` can key a cache on the layer's non-array parts."""
    leaves, treedef = jax.tree.flatten(layer)
    try:
        hash((treedef, tuple(leaf for leaf in leaves if not eqx.is_array(leaf))))
    except TypeError:
        return False
    return True


def compile_here(flow: AbstractFlow, *trees: Any) -> bool:
    """Whether a utility called now on `flow` and `trees` should compile itself (with
    `eqx.filter_jit`): nothing is being traced, and the flow's non-array parts can key the
    compilation cache."""
    return not_traced(flow, *trees) and hashable_statics(flow)


def _check_kept_shape(flow: AbstractFlow, in_shape: tuple[int, ...]) -> None:
    if tuple(in_shape) != flow.in_shape:
        raise ShapeError(
            f"nux_eqx.init(..., only_uninitialised=True): {type(flow).__name__} is initialised for "
            f"inputs of shape {_fmt(flow.in_shape)} but now receives {_fmt(tuple(in_shape))}; "
            "re-initialise it (replace it with a fresh layer) or give data of the shape it was "
            "initialised on."
        )


def check_key(owner: str, key: Any, *, batch_hint: bool = True) -> None:
    """The framework's own message for a `key` that is not one PRNG key (a typed key
    such as `jax.random.key(0)`, or a raw `uint32[2]` key from `jax.random.PRNGKey`)."""
    if isinstance(key, jax.Array):  # tracers included
        dtype, shape = key.dtype, tuple(key.shape)
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            if shape == ():
                return
            got = f"an array of {int(np.prod(shape))} keys (shape {_fmt(shape)})"
        elif dtype == jnp.uint32 and shape == (2,):
            return
        else:
            got = f"an array of dtype {dtype} and shape {_fmt(shape)}"
    else:
        got = f"{type(key).__name__} {key!r}" if isinstance(key, (int, float, str)) else type(key).__name__
    hint = " (split one key per example under jax.vmap)" if batch_hint else ""
    raise TypeError(f"{owner}: `key` must be one PRNG key, such as `jax.random.key(0)`{hint}; got {got}.")


def with_shapes(
    flow: AbstractFlow, in_shape: tuple[int, ...] | None, out_shape: tuple[int, ...] | None
) -> AbstractFlow:
    """Return a copy of `flow` with its recorded (static) unbatched shapes replaced.

    The one mechanism for recorded metadata: `eqx.tree_at` replaces pytree nodes only,
    so static fields are set on a shallow copy. A custom container calls it at the end of
    its `init_and_push` (see the custom-layer tutorial); leaf layers never need it.

    **Arguments:**

    - `flow`: any flow.
    - `in_shape`, `out_shape`: the shapes of one example on the data and the latent side
      (or `None`: not known yet).

    **Returns:**

    A new flow with the same parameters and the given shapes.
    """
    new = copy.copy(flow)
    object.__setattr__(new, "_in_shape", None if in_shape is None else tuple(int(s) for s in in_shape))
    object.__setattr__(new, "_out_shape", None if out_shape is None else tuple(int(s) for s in out_shape))
    return new


def push(
    flow: AbstractFlow,
    x_batch: Array,
    *,
    key: PRNGKeyArray | None,
    cond: PyTree = None,
    reverse: bool = False,
) -> Array:
    """Apply a flow to a batch with `jax.vmap` (one key per example) and return the outputs."""

    def one(x, k, c):
        return flow(x, reverse, key=k, cond=c)[0]

    return keyed_vmap(one, x_batch, batch_keys(key, x_batch.shape[0]), cond)


def check_input(flow: AbstractFlow, x: Any, reverse: bool) -> Array:
    name = type(flow).__name__
    expected = flow._out_shape if reverse else flow._in_shape
    if expected is None:
        if flow._in_shape is None:
            raise NotInitialisedError(
                f"{name} has not been initialised: its shapes and parameters come from data. "
                "Call `flow = nux_eqx.init(flow, x_batch, key=key)` with a batch (one leading "
                "batch axis) first."
            )
        raise NotInitialisedError(
            f"{name}: the output shape is not known yet, so it cannot run in reverse; "
            "finish `nux_eqx.init` first."
        )
    if not isinstance(x, jax.Array):
        kind = getattr(getattr(x, "dtype", None), "kind", None)
        if kind is not None and kind not in "biuf":
            raise TypeError(f"{name} expected a real floating array, got dtype {x.dtype}.")
        try:
            x = jnp.asarray(x)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} expected an array (one example), got {type(x).__name__}.") from e
    dtype = x.dtype
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"{name} expected a real floating array, got dtype {dtype}; flows act on real data.")
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"{name} expected a real floating array, got dtype {dtype}.")
    if jnp.issubdtype(dtype, jnp.integer):
        x = x.astype(jnp.result_type(float))
    shape = tuple(x.shape)
    side = "latent (reverse) input" if reverse else "input"
    if shape != expected:
        k = len(expected)
        if len(shape) > k and shape[len(shape) - k :] == expected:
            raise ShapeError(
                f"{name} expected an {side} of shape {_fmt(expected)}, got {_fmt(shape)}: flows "
                "take ONE example; batch with `jax.vmap(lambda x: flow(x))(x_batch)`."
            )
        raise ShapeError(f"{name} expected an {side} of shape {_fmt(expected)}, got {_fmt(shape)}.")
    return x


def check_examples(caller: str, name: str, x: Any) -> None:
    """Refuse a concrete batch that holds no examples or a NaN / inf, naming the first bad
    example, where in it and the value. Traced values (under `jit`, `eval_shape`) are
    unknown and pass unchecked. Shared by `init` and `fit`."""
    if isinstance(x, jax.core.Tracer):
        return
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if np.ndim(x) >= 1 and np.shape(x)[0] == 0:
        raise ValueError(f"{caller}: `{name}` holds no examples (shape {tuple(np.shape(x))}).")
    if np.ndim(x) < 1 or not jnp.issubdtype(x.dtype, jnp.floating):
        return
    finite = np.isfinite(x) if isinstance(x, np.ndarray) else jnp.isfinite(x)
    if bool(finite.all()):
        return
    bad = ~np.asarray(finite).reshape(len(x), -1)
    rows = np.flatnonzero(bad.any(1))
    i = int(rows[0])
    j = int(np.flatnonzero(bad[i])[0])
    where = tuple(int(k) for k in np.unravel_index(j, np.shape(x)[1:]))
    value = np.asarray(x[i]).reshape(-1)[j]
    raise ValueError(
        f"{caller}: `{name}` holds {int(bad.sum())} non-finite values (NaN or inf) in {len(rows)} "
        f"example(s), the first in example {i}: {value} at index {where} of that example; remove or "
        "impute them first."
    )


def check_cond_axis(caller: str, cond: PyTree, what: str, n: int) -> None:
    """Raise a `ShapeError` unless every leaf of a batched `cond` has a leading axis of size
    `n`; `what` describes that axis in the message."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(cond):
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != n:
            raise ShapeError(
                f"{caller}: every leaf of `cond` needs {what}; cond{jax.tree_util.keystr(path)} has "
                f"shape {jnp.shape(leaf)}."
            )


def check_cond_examples(caller: str, name: str, cond: PyTree) -> None:
    """`check_examples` on every leaf of a batched `cond`, naming the leaf by its path."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(cond):
        check_examples(caller, f"{name}{jax.tree_util.keystr(path)}", leaf)


# --------------------------------------------------------------------------------------
# Public functions.
# --------------------------------------------------------------------------------------


def init(
    flow: AbstractFlow,
    x_batch: Any,
    *,
    key: PRNGKeyArray,
    cond: PyTree = None,
    only_uninitialised: bool = False,
) -> AbstractFlow:
    """Materialise a flow's shapes and parameters from one batch of data.

    Layers are written without shapes (`Coupling()`, `ActNorm()`); `init` walks the flow,
    hands each layer the batch as it arrives there, lets it fill its parameters (ActNorm
    uses the batch statistics), and records every layer's unbatched input and output
    shapes. It is pure and traceable, so
    `eqx.filter_eval_shape(nux_eqx.init, flow, x_like, key=key)` gives a skeleton to load
    a checkpoint into. Called outside `jit`, it compiles each layer's initialisation as a
    small program of its own (cached, so repeated blocks compile once), which needs less
    memory than one program for the whole flow or running it op by op; inside `jit` it is
    part of your program.

    **Arguments:**

    - `flow`: an un-initialised (or initialised: it is re-initialised) flow.
    - `x_batch`: data with exactly one leading batch axis, e.g. `(batch, dim)` or
      `(batch, h, w, c)`. Parameters take its floating dtype. It must hold at least one
      example and no NaN or inf (nor may a floating leaf of `cond`): called eagerly, `init`
      refuses such data with a `ValueError` naming the first bad example and value, since
      data-dependent layers (`ActNorm`) would silently fill NaN parameters. Under tracing
      (`jax.jit`, `eqx.filter_eval_shape`) the values are unknown and are not checked; check
      traced data yourself.
    - `key`: a PRNG key for random initialisation (and stochastic layers).
    - `cond`: batched conditioning (leading batch axis on every leaf), or `None`.
    - `only_uninitialised`: if `True`, layers that are already initialised keep their
      parameters (bit for bit) and only the others are initialised, each on the batch as
      it arrives there after the kept layers. Use it after tree surgery, e.g. a new prior
      swapped into a trained flow with `eqx.tree_at`:

      <!-- not-run: a fragment; `trained` and `x_batch` are the reader's own -->
      ```python
      flow = eqx.tree_at(lambda f: f.layers[-1], trained, nux_eqx.DiagGaussianPrior())
      flow = nux_eqx.init(flow, x_batch, key=key, only_uninitialised=True)
      ```

      A kept layer must receive inputs of the shape it was initialised for. The default
      `False` re-initialises every layer.

    **Returns:**

    A NEW initialised flow; the input flow is unchanged.

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (128, 2))             # (batch, dim)
        flow = nux.Sequential(nux.ActNorm(), nux.Coupling(hidden_layer_sizes=(16,)), nux.UnitGaussianPrior())
        print(flow.is_initialised)                                     # False
        flow = nux.init(flow, x, key=jax.random.key(1))
        print(flow.is_initialised, flow.in_shape, flow.out_shape)      # True (2,) (2,)
        z = jax.vmap(flow)(x)[0]                                       # ActNorm standardised the batch
        print(z.mean(0).round(3), z.std(0).round(3))
        ```
    """
    if not isinstance(flow, AbstractFlow):
        raise TypeError(f"nux_eqx.init expects a flow (an AbstractFlow), got {type(flow).__name__}.")
    check_key("nux_eqx.init", key, batch_hint=False)
    if not isinstance(x_batch, jax.Array):
        kind = getattr(getattr(x_batch, "dtype", None), "kind", None)
        if kind is None:
            x_batch = np.asarray(x_batch)
            kind = x_batch.dtype.kind
        if kind not in "biuf":
            raise TypeError(
                f"nux_eqx.init expects real floating data, got dtype {x_batch.dtype}; convert it to float32 first."
            )
    x_batch = jnp.asarray(x_batch)
    if x_batch.ndim < 2:
        raise ShapeError(
            f"nux_eqx.init expects a batch with one leading batch axis, got shape {x_batch.shape}; "
            "for a single vector example use `x[None]`."
        )
    if jnp.issubdtype(x_batch.dtype, jnp.integer):
        x_batch = x_batch.astype(jnp.result_type(float))
    if not jnp.issubdtype(x_batch.dtype, jnp.floating):
        raise TypeError(f"nux_eqx.init expects real floating data, got dtype {x_batch.dtype}.")
    check_examples("nux_eqx.init", "x_batch", x_batch)
    if cond is not None:
        check_cond_axis(
            "nux_eqx.init", cond, f"the same leading batch axis as x ({x_batch.shape[0]})", x_batch.shape[0]
        )
        check_cond_examples("nux_eqx.init", "cond", cond)
    with set_flag(ONLY_UNINITIALISED, bool(only_uninitialised)):
        new, _ = flow.init_and_push(x_batch, key=key, cond=cond)
    return new


def log_prob(flow: AbstractFlow, x: Any, *, key: PRNGKeyArray | None = None, cond: PyTree = None) -> Array:
    """The log-likelihood of ONE example: the summed contributions of a forward pass.

    **Arguments:**

    - `flow`: an initialised flow ending in a prior.
    - `x`: one example.
    - `key`, `cond`: as for the flow's `__call__`.

    **Returns:**

    A scalar: `log p(x)` (a bound on it for stochastic layers).

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (128, 2))
        flow = nux.init(nux.RealNVP(2, (16,)), x, key=jax.random.key(1))
        print(nux.log_prob(flow, x[0]).shape)                          # (): one example
        log_px = jax.vmap(lambda v: nux.log_prob(flow, v))(x)          # a batch: vmap
        print(log_px.shape)                                            # (128,)
        ```
    """
    return flow(x, key=key, cond=cond)[1]


def sample(
    flow: AbstractFlow,
    key: PRNGKeyArray,
    *,
    cond: PyTree = None,
    temperature: float = 1.0,
) -> tuple[Array, Array]:
    """Draw ONE example from a flow: sample its prior(s), then run it in reverse.

    Batch with `jax.vmap(lambda k: nux_eqx.sample(flow, k))(jax.random.split(key, n))`.

    **Arguments:**

    - `flow`: an initialised flow ending in a prior.
    - `key`: a PRNG key.
    - `cond`: conditioning, as for `__call__`.
    - `temperature`: scales the priors' noise (`z = temperature * eps` for Gaussians); a
      finite number `>= 0` (`0` gives the priors' modes). A negative or non-finite value
      raises a `ValueError` (an `eqx.error_if` error when it is traced).

    **Returns:**

    `(x, log_q)`: the sample and its log-density under the flow (the untempered model,
    so `log_q == nux_eqx.log_prob(flow, x)` at any temperature for bijective flows).

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (128, 2))
        flow = nux.init(nux.RealNVP(2, (16,)), x, key=jax.random.key(1))
        x_new, log_q = nux.sample(flow, jax.random.key(2))            # (2,), ()
        assert jnp.allclose(log_q, nux.log_prob(flow, x_new), atol=1e-4)
        xs, log_qs = jax.vmap(lambda k: nux.sample(flow, k))(jax.random.split(jax.random.key(3), 500))
        print(xs.shape, log_qs.shape)                                  # (500, 2) (500,)
        ```
    """
    if not flow.is_initialised:
        check_input(flow, jnp.zeros(()), False)
    check_key("nux_eqx.sample", key)
    temperature = _check_temperature(temperature)
    return sample_from(flow, key, cond=cond, temperature=temperature)


def _check_temperature(temperature: Any) -> Any:
    message = "nux_eqx.sample: `temperature` must be a finite number >= 0 (1 samples the model itself)"
    if isinstance(temperature, jax.core.Tracer):
        bad = ~(jnp.isfinite(temperature) & (temperature >= 0))
        return eqx.error_if(temperature, jnp.any(bad), message + ".")
    try:
        t = np.asarray(temperature, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{message}; got {type(temperature).__name__}.") from e
    if t.shape != () or not (np.isfinite(t) and t >= 0):
        raise ValueError(f"{message}; got {temperature!r}.")
    return temperature
