"""Containers: `Sequential`, `Invert`, `Factored`, `ChainRule`. Each is a pytree."""

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray, PyTree, Shaped

from ._context import child_scope
from ._flow import AbstractContainer, AbstractFlow, ShapeError, cannot_sample, push, sample_from, with_shapes
from ._maths import split_key


def _check_flows(owner: str, flows) -> tuple[AbstractFlow, ...]:
    flows = tuple(flows)
    for i, f in enumerate(flows):
        if not isinstance(f, AbstractFlow):
            raise TypeError(
                f"{owner}: argument {i} must be a flow (an AbstractFlow), got {type(f).__name__}. "
                "Did you pass a class instead of an instance, e.g. `ActNorm` instead of `ActNorm()`?"
            )
    return flows


class Sequential(AbstractContainer):
    """Layers in order: forward in order, reverse in reverse order; contributions sum.

    NuX's `sequential`. Sampling starts at the last layer (a prior) and runs the others
    in reverse.

    **Arguments:**

    - `*layers`: the flows, data side first.

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (64, 3))          # a batch of 64 examples
        flow = nux.Sequential(nux.ActNorm(), nux.Reverse(), nux.UnitGaussianPrior())
        flow = nux.init(flow, x, key=jax.random.key(1))            # shapes from the batch
        z, log_px = flow(x[0])                                     # ONE example: (3,) -> (3,), ()
        print(z.shape, log_px.shape, flow[0].in_shape)             # (3,) () (3,)
        ```
    """

    layers: tuple[AbstractFlow, ...]

    def __init__(self, *layers: AbstractFlow):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer.")
        self.layers = _check_flows("Sequential", layers)

    def children(self):
        return tuple((f"layers[{i}]", f) for i, f in enumerate(self.layers))

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, idx: int | slice) -> AbstractFlow:
        """`flow[i]` is the i-th layer; `flow[a:b]` is a `Sequential` of those layers,
        initialised when they are (e.g. the bijective trunk of a model)."""
        if not isinstance(idx, slice):
            return self.layers[idx]
        layers = self.layers[idx]
        out = Sequential(*layers)
        if all(f.is_initialised for f in layers):
            out = with_shapes(out, layers[0].in_shape, layers[-1].out_shape)
        return out

    def transform(
        self, x: Shaped[Array, "..."], reverse: bool, *, key: PRNGKeyArray | None, cond: PyTree
    ) -> tuple[Shaped[Array, "..."], Shaped[Array, ""]]:
        n = len(self.layers)
        keys = split_key(key, n)
        total = jnp.zeros((), x.dtype)
        for i in reversed(range(n)) if reverse else range(n):
            with child_scope(f"layers[{i}]"):
                x, c = self.layers[i](x, reverse, key=keys[i], cond=cond)
            total = total + c
        return x, total

    def init_and_push(self, x_batch, *, key, cond=None):
        keys = jr.split(key, len(self.layers))
        z, new = x_batch, []
        for layer, k in zip(self.layers, keys):
            layer, z = layer.init_and_push(z, key=k, cond=cond)
            new.append(layer)
        out = eqx.tree_at(lambda s: s.layers, self, tuple(new))
        return with_shapes(out, x_batch.shape[1:], z.shape[1:]), z

    def children_can_sample(self) -> bool:
        return any(f.can_sample() for f in self.layers)

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        # Sample at the last layer that can (a prior, or a container of priors). Layers
        # after it only reshape the latent output: they run forward to add their
        # contributions; the layers before it run in reverse.
        n = len(self.layers)
        p = max((i for i, f in enumerate(self.layers) if f.can_sample()), default=None)
        if p is None:
            raise cannot_sample(self)
        k_p, k_rest = jr.split(key)
        with child_scope(f"layers[{p}]"):
            x, log_q = self.layers[p].sample_and_log_prob(k_p, cond=cond, temperature=temperature)
        keys = split_key(k_rest, n)
        z = x
        for i in range(p + 1, n):
            with child_scope(f"layers[{i}]"):
                z, c = self.layers[i](z, False, key=keys[i], cond=cond)
            log_q = log_q + c
        for i in reversed(range(p)):
            with child_scope(f"layers[{i}]"):
                x, c = self.layers[i](x, True, key=keys[i], cond=cond)
            log_q = log_q + c
        return x, log_q


sequential = Sequential


class Invert(AbstractContainer):
    """Swap the directions of a flow and negate its contribution.

    `Invert(f)` runs `f` in reverse when called forward. IAF is `Invert(MAF(...))`.
    An un-initialised inner flow is initialised on the batch as it arrives, which needs
    `f` to preserve shape; initialise a shape-changing `f` yourself first.

    **Arguments:**

    - `flow`: the flow to invert.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (64, 2)) * 3.0 + 1.0
        flow = nux.init(nux.Sequential(nux.Invert(nux.ActNorm()), nux.UnitGaussianPrior()),
                        x, key=jax.random.key(1))
        inverted, actnorm = flow[0], flow[0].flow     # Invert(ActNorm) and its ActNorm
        z, c = inverted(x[0])                         # = ActNorm run in reverse
        x_back, c_back = actnorm(z)
        assert jnp.allclose(x_back, x[0], atol=1e-4) and jnp.allclose(c, -c_back)
        ```
    """

    flow: AbstractFlow

    def __init__(self, flow: AbstractFlow):
        (self.flow,) = _check_flows("Invert", [flow])

    def children(self):
        return (("flow", self.flow),)

    def transform(
        self, x: Shaped[Array, "..."], reverse: bool, *, key: PRNGKeyArray | None, cond: PyTree
    ) -> tuple[Shaped[Array, "..."], Shaped[Array, ""]]:
        with child_scope("flow"):
            z, c = self.flow(x, not reverse, key=key, cond=cond)
        return z, -c

    def init_and_push(self, x_batch, *, key, cond=None):
        shape = tuple(x_batch.shape[1:])
        inner = self.flow
        if not inner.is_initialised:
            inner, _ = inner.init_and_push(x_batch, key=key, cond=cond)
            if inner.out_shape != shape:
                raise ShapeError(
                    f"Invert can only initialise a shape-preserving flow from data; "
                    f"{type(inner).__name__} maps {inner.in_shape} to {inner.out_shape}. "
                    "Initialise the inner flow with `nux_eqx.init` on its own data first."
                )
        elif inner.out_shape != shape:
            raise ShapeError(
                f"Invert: the inner {type(inner).__name__} outputs {inner.out_shape}, "
                f"but the data arriving here has shape {shape}."
            )
        new = eqx.tree_at(lambda s: s.flow, self, inner)
        new = with_shapes(new, inner.out_shape, inner.in_shape)
        return new, push(new, x_batch, key=key, cond=cond)

    def children_can_sample(self) -> bool:
        return False  # the inner flow's prior would sit at the data end

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        raise cannot_sample(self)


def _norm_axis(axis: int, ndim: int, owner: str) -> int:
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{owner}: axis {axis} is out of range for examples of rank {ndim}.")
    return axis % ndim


def _split_sizes(split: int | tuple[int, ...], size: int, n_flows: int, owner: str) -> tuple[int, ...]:
    if isinstance(split, int):
        if split != n_flows:
            raise ShapeError(
                f"{owner}: split={split} makes {split} parts, but {n_flows} flows were given; "
                "give one flow per part."
            )
        if size % split:
            raise ShapeError(
                f"{owner}: cannot split an axis of size {size} into {split} equal parts; "
                "pass split as a tuple of indices instead (jnp.split semantics)."
            )
        return (size // split,) * split
    idx = (0, *split, size)
    if len(idx) - 1 != n_flows:
        raise ShapeError(
            f"{owner}: split={split} makes {len(idx) - 1} parts, but {n_flows} flows were given."
        )
    sizes = tuple(b - a for a, b in zip(idx[:-1], idx[1:]))
    if any(s <= 0 for s in sizes):
        raise ShapeError(f"{owner}: split indices {split} must be increasing and inside (0, {size}).")
    return sizes


def _cut(x: Array, sizes: tuple[int, ...], axis: int) -> list[Array]:
    idx, acc = [], 0
    for s in sizes[:-1]:
        acc += s
        idx.append(acc)
    return jnp.split(x, idx, axis=axis)


class Factored(AbstractContainer):
    """Split the example, run one flow per part independently, concatenate the outputs.

    NuX's `ChainRule(2, factor=True)` + `factored(...)` + `ChainRule(2, factor=False)` in
    one container: `log p(x) = sum_i log p_i(x_i)`.

    **Arguments:**

    - `*flows`: one flow per part.
    - `split`: `jnp.split` semantics: an int `n` for `n` equal parts (must equal the number
      of flows), or a tuple of indices.
    - `axis`: the axis to split along (default: the last, channels for images).

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (64, 4))
        flow = nux.Sequential(
            nux.Factored(nux.ActNorm(), nux.Identity()),   # (4,) -> two halves of (2,)
            nux.UnitGaussianPrior(),
        )
        flow = nux.init(flow, x, key=jax.random.key(1))
        z, log_px = flow(x[0])
        print(flow[0].flows[0].in_shape, z.shape)     # (2,) (4,)
        ```
    """

    flows: tuple[AbstractFlow, ...]
    split: int | tuple[int, ...] = eqx.field(static=True)
    axis: int = eqx.field(static=True)

    def __init__(self, *flows: AbstractFlow, split: int | tuple[int, ...] = 2, axis: int = -1):
        self.flows = _check_flows("Factored", flows)
        if not self.flows:
            raise ValueError("Factored needs at least one flow.")
        self.split = split if isinstance(split, int) else tuple(int(i) for i in split)
        self.axis = int(axis)

    def children(self):
        return tuple((f"flows[{i}]", f) for i, f in enumerate(self.flows))

    def _sizes(self, reverse: bool) -> tuple[int, tuple[int, ...]]:
        ax = _norm_axis(self.axis, len(self.in_shape), "Factored")
        if reverse:
            return ax, tuple(f.out_shape[ax] for f in self.flows)
        return ax, _split_sizes(self.split, self.in_shape[ax], len(self.flows), "Factored")

    def transform(
        self, x: Shaped[Array, "..."], reverse: bool, *, key: PRNGKeyArray | None, cond: PyTree
    ) -> tuple[Shaped[Array, "..."], Shaped[Array, ""]]:
        ax, sizes = self._sizes(reverse)
        parts = _cut(x, sizes, ax)
        keys = split_key(key, len(self.flows))
        outs, total = [], jnp.zeros((), x.dtype)
        for i, (f, p, k) in enumerate(zip(self.flows, parts, keys)):
            with child_scope(f"flows[{i}]"):
                z, c = f(p, reverse, key=k, cond=cond)
            outs.append(z)
            total = total + c
        return jnp.concatenate(outs, axis=ax), total

    def init_and_push(self, x_batch, *, key, cond=None):
        shape = tuple(x_batch.shape[1:])
        ax = _norm_axis(self.axis, len(shape), "Factored")
        sizes = _split_sizes(self.split, shape[ax], len(self.flows), "Factored")
        parts = _cut(x_batch, sizes, ax + 1)
        keys = jr.split(key, len(self.flows))
        new, outs = [], []
        for f, p, k in zip(self.flows, parts, keys):
            f, z = f.init_and_push(p, key=k, cond=cond)
            new.append(f)
            outs.append(z)
        try:
            z = jnp.concatenate(outs, axis=ax + 1)
        except (TypeError, ValueError) as e:
            raise ShapeError(
                f"Factored: the parts' outputs {[o.shape[1:] for o in outs]} cannot be "
                f"concatenated along axis {self.axis}."
            ) from e
        out = eqx.tree_at(lambda s: s.flows, self, tuple(new))
        return with_shapes(out, shape, z.shape[1:]), z

    def children_can_sample(self) -> bool:
        return all(f.can_sample() for f in self.flows)

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        ax = _norm_axis(self.axis, len(self.in_shape), "Factored")
        keys = jr.split(key, len(self.flows))
        xs, total = [], 0.0
        for i, (f, k) in enumerate(zip(self.flows, keys)):
            with child_scope(f"flows[{i}]"):
                x, lq = sample_from(f, k, cond=cond, temperature=temperature)
            xs.append(x)
            total = total + lq
        return jnp.concatenate(xs, axis=ax), total


factored = Factored


class ChainRuleCond(NamedTuple):
    """The conditioning `ChainRule` hands its second flow.

    **Fields:**

    - `x_a`: the first part of the example (data side), which the second part is
      conditioned on.
    - `cond`: the outer conditioning (or `None`).
    """

    x_a: Array
    cond: PyTree


def _refuse_nux_chain_rule(first: object, second: object, options: dict) -> None:
    # NuX spelled a split as a pair of layers, `ChainRule(2, factor=True)` ...
    # `ChainRule(2, factor=False)`; here ChainRule is one container holding both flows.
    unknown = sorted(set(options) - {"factor"})
    if unknown:
        raise TypeError(f"ChainRule got unexpected keyword argument(s) {unknown}.")
    given = ", ".join(
        [repr(first) if not isinstance(first, AbstractFlow) else type(first).__name__]
        + ([] if second is None else [type(second).__name__])
        + [f"{k}={v!r}" for k, v in options.items()]
    )
    raise TypeError(
        f"ChainRule({given}): nux_eqx's ChainRule is Glow's split-prior container, "
        "`ChainRule(first, second, split=2, axis=-1)`: it splits an example in two, runs the "
        "flow `first` on one part and the (conditional) flow `second` on the other given the "
        "first, so it takes two flows. NuX's `ChainRule(2, factor=True)` ... "
        "`ChainRule(2, factor=False)` pair of split and merge layers does not exist here: for "
        "NuX's factor pattern use `nux_eqx.multi_scale(flow, inner)` (split, run `inner` on one "
        "half, merge) or `nux_eqx.Factored(flow_a, flow_b, split=2)` (independent flows on the "
        "parts)."
    )


class ChainRule(AbstractContainer):
    """`log p(x) = log p(x_a) + log p(x_b | x_a)`: Glow's multiscale split.

    The example is split in two along `axis`; `first` gets `x_a`; `second` gets `x_b`
    with `cond=ChainRuleCond(x_a, cond)` (see [`nux_eqx.ChainRuleCond`][]), so a
    conditional prior such as `ConditionalGaussianPrior` can score the factored-out half
    given the rest. The output is the concatenation of both outputs.

    NuX's pair of layers `ChainRule(2, factor=True)` ... `ChainRule(2, factor=False)` (split,
    then merge) is not this container and raises a `TypeError`: write NuX's factor pattern
    with [`nux_eqx.multi_scale`][] or [`nux_eqx.Factored`][].

    **Arguments:**

    - `first`: the flow on `x_a`.
    - `second`: the (conditional) flow on `x_b`.
    - `split`: an int (2: two equal halves) or a one-element tuple with the split index.
    - `axis`: the axis to split along (default: the last).

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (64, 4))
        flow = nux.ChainRule(
            nux.UnitGaussianPrior(),                                    # p(x_a), x_a: (2,)
            nux.ConditionalGaussianPrior(hidden_layer_sizes=(16,)),     # p(x_b | x_a)
        )
        flow = nux.init(flow, x, key=jax.random.key(1))
        print(nux.log_prob(flow, x[0]).shape)                           # ()
        x_new, log_q = nux.sample(flow, jax.random.key(2))
        print(x_new.shape)                                              # (4,)
        ```
    """

    first: AbstractFlow
    second: AbstractFlow
    split: int | tuple[int, ...] = eqx.field(static=True)
    axis: int = eqx.field(static=True)

    def __init__(
        self,
        first: AbstractFlow,
        second: AbstractFlow | None = None,
        split: int | tuple[int] = 2,
        axis: int = -1,
        **nux_options: object,
    ):
        if not isinstance(first, AbstractFlow) or second is None or nux_options:
            _refuse_nux_chain_rule(first, second, nux_options)
        self.first, self.second = _check_flows("ChainRule", [first, second])
        self.split = split if isinstance(split, int) else tuple(int(i) for i in split)
        self.axis = int(axis)

    def children(self):
        return (("first", self.first), ("second", self.second))

    def transform(
        self, x: Shaped[Array, "..."], reverse: bool, *, key: PRNGKeyArray | None, cond: PyTree
    ) -> tuple[Shaped[Array, "..."], Shaped[Array, ""]]:
        ax = _norm_axis(self.axis, x.ndim, "ChainRule")
        if reverse:
            sizes = (self.first.out_shape[ax], self.second.out_shape[ax])
        else:
            sizes = _split_sizes(self.split, self.in_shape[ax], 2, "ChainRule")
        p_a, p_b = _cut(x, sizes, ax)
        k_a, k_b = split_key(key, 2)
        if reverse:
            with child_scope("first"):
                x_a, c_a = self.first(p_a, True, key=k_a, cond=cond)
            with child_scope("second"):
                x_b, c_b = self.second(p_b, True, key=k_b, cond=ChainRuleCond(x_a, cond))
            return jnp.concatenate([x_a, x_b], axis=ax), c_a + c_b
        with child_scope("first"):
            z_a, c_a = self.first(p_a, False, key=k_a, cond=cond)
        with child_scope("second"):
            z_b, c_b = self.second(p_b, False, key=k_b, cond=ChainRuleCond(p_a, cond))
        return jnp.concatenate([z_a, z_b], axis=ax), c_a + c_b

    def init_and_push(self, x_batch, *, key, cond=None):
        shape = tuple(x_batch.shape[1:])
        ax = _norm_axis(self.axis, len(shape), "ChainRule")
        sizes = _split_sizes(self.split, shape[ax], 2, "ChainRule")
        x_a, x_b = _cut(x_batch, sizes, ax + 1)
        k_a, k_b = jr.split(key)
        first, z_a = self.first.init_and_push(x_a, key=k_a, cond=cond)
        second, z_b = self.second.init_and_push(x_b, key=k_b, cond=ChainRuleCond(x_a, cond))
        out = eqx.tree_at(lambda s: (s.first, s.second), self, (first, second))
        z = jnp.concatenate([z_a, z_b], axis=ax + 1)
        return with_shapes(out, shape, z.shape[1:]), z

    def children_can_sample(self) -> bool:
        return self.first.can_sample() and self.second.can_sample()

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        ax = _norm_axis(self.axis, len(self.in_shape), "ChainRule")
        k_a, k_b = jr.split(key)
        with child_scope("first"):
            x_a, lq_a = sample_from(self.first, k_a, cond=cond, temperature=temperature)
        with child_scope("second"):
            x_b, lq_b = sample_from(self.second, k_b, cond=ChainRuleCond(x_a, cond), temperature=temperature)
        return jnp.concatenate([x_a, x_b], axis=ax), lq_a + lq_b
