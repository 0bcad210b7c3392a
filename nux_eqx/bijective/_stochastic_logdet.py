"""Bijections whose log-determinant has an exact form for evaluation and a cheaper
unbiased estimator for training: `AbstractEstimableFlow`, the `StochasticLogDet` wrapper
that switches a layer to its estimator, and `stochastic_log_det` that switches a whole
flow.

A layer's kind is its base class in nux_eqx (and `forward_needs_key` a class flag), so the same
instance cannot be a deterministic bijection in one call and a keyed stochastic layer in
the next. The exact mode is the layer itself (a bijection, checked by `check_flow`
against the brute-force Jacobian); the estimator mode is the layer wrapped in
`StochasticLogDet` (a stochastic layer that needs a key, like dequantisation). The
wrapper adds no parameters, so a flow trained wrapped and evaluated unwrapped has the
same leaves (and the same checkpoint layout).
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._flow import AbstractBijection, AbstractSurjective
from .._types import AnyShape, Cond, Key, Scalar


class AbstractEstimableFlow(AbstractBijection):
    """A bijection with an exact log-determinant (its `transform`) and an unbiased
    stochastic estimate of it (`transform_estimate`), such as
    [`nux_eqx.ContinuousFlow`][] (Hutchinson's trace estimator) and
    [`nux_eqx.ResidualFlow`][] (the Russian-roulette power series).

    Wrap it in [`nux_eqx.StochasticLogDet`][] (or call
    [`nux_eqx.stochastic_log_det`][] on a whole flow) to train with the estimator.
    """

    @abc.abstractmethod
    def transform_estimate(
        self, x: Array, reverse: bool, *, key: PRNGKeyArray, cond: PyTree
    ) -> tuple[Array, Array]:
        """The same map as `transform`, with the contribution replaced by an unbiased
        estimate drawn with `key` (its mean over keys is `transform`'s contribution).

        **Returns:** `(z, contribution_estimate)`.
        """


class StochasticLogDet(AbstractSurjective):
    """Run an [`nux_eqx.AbstractEstimableFlow`][] with its stochastic log-determinant.

    The output `z` is the wrapped layer's (the same bijection); the contribution is an
    unbiased estimate of its `log|det dz/dx|` drawn with the call's `key`, cheaper than
    the exact value in high dimensions. It is a stochastic layer: the forward direction
    needs a `key` (one per example under `jax.vmap`; [`nux_eqx.train.fit`][] and the
    losses split one per example). In reverse a key gives the estimate too, and no key
    gives the exact value, so sampling works with or without one.

    The wrapper holds no parameters of its own: train with it, then evaluate the exact
    density with `stochastic_log_det(flow, False)`, which unwraps it.

    **Arguments:**

    - `flow`: the layer to wrap (initialised or not; the wrapper of an initialised layer
      is initialised).
    """

    flow: AbstractEstimableFlow
    forward_needs_key: ClassVar[bool] = True

    def __init__(self, flow: AbstractEstimableFlow):
        if not isinstance(flow, AbstractEstimableFlow):
            raise TypeError(
                "StochasticLogDet wraps a layer with a log-determinant estimator (ContinuousFlow, "
                f"ResidualFlow or another AbstractEstimableFlow), got {type(flow).__name__}."
            )
        self.flow = flow
        # wrapping an initialised layer gives an initialised wrapper
        self._in_shape, self._out_shape = flow.in_shape, flow.out_shape

    def init(self, x_batch, *, key, cond=None):
        inner, _ = self.flow.init_and_push(x_batch, key=key, cond=cond)
        return eqx.tree_at(lambda s: s.flow, self, inner)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        if key is None:  # reverse without a key: exact
            return self.flow.transform(x, reverse, key=None, cond=cond)
        return self.flow.transform_estimate(x, reverse, key=key, cond=cond)


def _wrap(node):
    if isinstance(node, StochasticLogDet):
        return node
    if isinstance(node, AbstractEstimableFlow):
        return StochasticLogDet(node)
    return node


def stochastic_log_det(flow: PyTree, enabled: bool = True) -> PyTree:
    """Switch every [`nux_eqx.AbstractEstimableFlow`][] inside `flow` to its stochastic
    log-determinant (wrap it in [`nux_eqx.StochasticLogDet`][]) or back to the exact one.

    This is the flows' analogue of `eqx.nn.inference_mode`: train with
    `stochastic_log_det(flow)` (the forward pass then needs a key, which `fit` and the
    losses supply), evaluate with `stochastic_log_det(flow, False)`. It works on
    initialised and un-initialised flows, and inside containers and `Repeat`.

    **Arguments:**

    - `flow`: a flow (any pytree holding flows).
    - `enabled`: `True` to wrap, `False` to unwrap.

    **Returns:** the flow with the layers switched; the parameters are shared.
    """
    is_target = lambda n: isinstance(n, (StochasticLogDet, AbstractEstimableFlow))  # noqa: E731
    if enabled:
        return jax.tree.map(_wrap, flow, is_leaf=is_target)
    return jax.tree.map(
        lambda n: n.flow if isinstance(n, StochasticLogDet) else n,
        flow,
        is_leaf=lambda n: isinstance(n, StochasticLogDet),
    )
