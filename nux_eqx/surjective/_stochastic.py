"""Stochastic layers with a variational bound: `VariationalDequantization` (Flow++) and
`Padding` (VFlow / augmented flows).

Their forward pass draws a variable `u` from a learned `q(u | x)`, given by a nux_eqx flow
on `u` that is conditioned on `x` and ends in a prior (so it can sample `u` together with
the exact `log q(u | x)`). The contribution `- log q(u | x)` (plus the dequantisation's
`-D log(scale)`) makes the summed forward contributions a single-sample estimate of the
evidence lower bound: averaged over keys it is at most `log p(x)`, with equality when
`q(u | x)` is the model's posterior. Their reverse direction is deterministic and returns
the same contribution at the `(x, z)` pair.

The inner flow gets `cond=ChainRuleCond(x_a=..., cond=outer cond)` (see
[`nux_eqx.ChainRuleCond`][]), so `ConditionalGaussianPrior`, `ConditionedCoupling` and
other conditional layers read `x` through `nux_eqx.nn.cond_features`.
"""

import math
from collections.abc import Sequence
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

from .._containers import ChainRuleCond, Sequential
from .._context import child_scope
from .._flow import AbstractFlow, AbstractSurjective, ShapeError
from .._types import AnyShape, Cond, Key, Scalar
from ..bijective import Logit
from ..priors import ConditionalGaussianPrior


def _check_inner(owner: str, flow) -> AbstractFlow:
    if not isinstance(flow, AbstractFlow):
        raise TypeError(
            f"{owner}: `flow` must be a nux_eqx flow on u (conditioned on x, ending in a prior), "
            f"got {type(flow).__name__}."
        )
    return flow


def _init_inner(owner: str, flow: AbstractFlow, u_batch, *, key, cond) -> AbstractFlow:
    inner, _ = flow.init_and_push(u_batch, key=key, cond=cond)
    if not inner.can_sample():
        raise ValueError(
            f"{owner}: the flow of q(u | x) must end in a prior so that it can sample u, e.g. "
            "`Sequential(..., ConditionalGaussianPrior())`."
        )
    if inner.in_shape != tuple(u_batch.shape[1:]):
        raise ShapeError(
            f"{owner}: the flow of q(u | x) takes {inner.in_shape}, but u has shape {u_batch.shape[1:]}."
        )
    return inner


class VariationalDequantization(AbstractSurjective):
    """Flow++'s variational dequantisation: `z = (x + u) / scale` with `u ~ q(u | x)` in
    `(0, 1)^D`.

    `x` holds integer levels `0 .. scale - 1` (as floats). `q(u | x)` is given by `flow`:
    a nux_eqx flow whose data side is `u` (of `x`'s shape, inside `(0, 1)`), conditioned
    on `cond=ChainRuleCond(x / scale, outer cond)` and ending in a prior; `u` and
    `log q(u | x)` come from `flow.sample_and_log_prob`. The default is a logit-normal
    `Sequential(Logit(lmbda=0), ConditionalGaussianPrior())`; for Flow++ put conditional
    couplings (`ConditionedCoupling`) between the two. The contribution
    `-D log(scale) - log q(u | x)` makes the summed forward contributions a single-sample
    lower bound on the discrete `log P(x)`: averaged over keys it is below `log P(x)`, and
    tight when `q(u | x)` is the model's density inside the bin of `x`. With `q` uniform
    (`Sequential(Logit(lmbda=0), LogisticPrior())`) it is
    [`nux_eqx.UniformDequantization`][]. Needs a `key` in the forward direction.
    Reverse maps `z` to `floor(z * scale)` and returns the same contribution, evaluated
    with `u = z * scale - floor(z * scale)`.

    **Arguments:**

    - `flow`: the flow of `q(u | x)` (see above), or `None` for the default.
    - `scale`: the number of levels, e.g. `256.0` for 8-bit images.
    - `hidden_layer_sizes`, `n_channels`: the default flow's `ConditionalGaussianPrior`
      network widths (vectors / images).
    """

    flow: AbstractFlow
    scale: float = eqx.field(static=True)
    forward_needs_key: ClassVar[bool] = True

    def __init__(
        self,
        flow: AbstractFlow | None = None,
        scale: float = 256.0,
        *,
        hidden_layer_sizes: Sequence[int] = (64, 64),
        n_channels: int = 64,
    ):
        scale = float(scale)
        if not scale > 0:
            raise ValueError(f"VariationalDequantization: scale must be > 0, got {scale}.")
        self.scale = scale
        if flow is None:
            flow = Sequential(
                Logit(lmbda=0.0),
                ConditionalGaussianPrior(hidden_layer_sizes=hidden_layer_sizes, n_channels=n_channels),
            )
        self.flow = _check_inner("VariationalDequantization", flow)

    def _cond(self, x, cond):
        return ChainRuleCond(x / self.scale, cond)

    def init(self, x_batch, *, key, cond=None):
        k_u, k_init = jr.split(key)
        u = jr.uniform(k_u, x_batch.shape, x_batch.dtype, minval=0.01, maxval=0.99)
        inner = _init_inner(
            "VariationalDequantization", self.flow, u, key=k_init, cond=self._cond(x_batch, cond)
        )
        return eqx.tree_at(lambda s: s.flow, self, inner)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        const = -x.size * math.log(self.scale)
        eps = jnp.finfo(x.dtype).eps
        if reverse:
            levels = jnp.clip(jnp.floor(x * self.scale), 0, self.scale - 1)
            u = jnp.clip(x * self.scale - levels, eps, 1 - eps)
            with child_scope("flow"):
                _, log_q = self.flow(u, False, key=None, cond=self._cond(levels, cond))
            return levels, (const - log_q).astype(x.dtype)
        with child_scope("flow"):
            u, log_q = self.flow.sample_and_log_prob(key, cond=self._cond(x, cond))
        u = jnp.clip(u, 0.0, 1 - eps)
        return (x + u) / self.scale, (const - log_q).astype(x.dtype)


class Padding(AbstractSurjective):
    """Augmentation (VFlow, Chen et al. 2020; augmented normalizing flows): append
    `padding_dim` entries `u ~ q(u | x)` to the last axis.

    Forward: `z = concatenate([x, u], -1)`, contribution `-log q(u | x)`. When the rest of
    the flow models `(x, u)` with a density `p(x, u)`, the summed contributions are the
    single-sample bound `log p(x, u) - log q(u | x)`: averaged over keys at most
    `log p(x)`, tight when `q(u | x) = p(u | x)`. `q(u | x)` is given by `flow`, a nux_eqx
    flow on `u` (shape `(..., padding_dim)`), conditioned on
    `cond=ChainRuleCond(x, outer cond)` and ending in a prior; the default is a
    `ConditionalGaussianPrior` (a diagonal Gaussian whose mean and log-scale are networks
    of `x`, starting at `N(0, I)`). Needs a `key` in the forward direction. Reverse drops
    the padding and returns the same contribution, `-log q(u | x)` at the pair.

    **Arguments:**

    - `padding_dim`: how many entries to append to the last axis (NuX's keyword).
    - `flow`: the flow of `q(u | x)`, or `None` for the default.
    - `hidden_layer_sizes`, `n_channels`: the default prior's network widths (vectors /
      images).
    """

    flow: AbstractFlow
    padding_dim: int = eqx.field(static=True)
    forward_needs_key: ClassVar[bool] = True

    def __init__(
        self,
        padding_dim: int,
        flow: AbstractFlow | None = None,
        *,
        hidden_layer_sizes: Sequence[int] = (64, 64),
        n_channels: int = 64,
    ):
        if int(padding_dim) < 1:
            raise ValueError(f"Padding: padding_dim must be >= 1, got {padding_dim}.")
        self.padding_dim = int(padding_dim)
        if flow is None:
            flow = ConditionalGaussianPrior(hidden_layer_sizes=hidden_layer_sizes, n_channels=n_channels)
        self.flow = _check_inner("Padding", flow)

    def init(self, x_batch, *, key, cond=None):
        if x_batch.ndim < 2:
            raise ShapeError("Padding appends to the last axis; scalar examples have none.")
        k_u, k_init = jr.split(key)
        u = jr.normal(k_u, (*x_batch.shape[:-1], self.padding_dim), x_batch.dtype)
        inner = _init_inner("Padding", self.flow, u, key=k_init, cond=ChainRuleCond(x_batch, cond))
        return eqx.tree_at(lambda s: s.flow, self, inner)

    def transform(
        self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond
    ) -> tuple[Float[Array, "..."], Scalar]:
        if reverse:
            x_data, u = x[..., : -self.padding_dim], x[..., -self.padding_dim :]
            with child_scope("flow"):
                _, log_q = self.flow(u, False, key=None, cond=ChainRuleCond(x_data, cond))
            return x_data, -log_q
        with child_scope("flow"):
            u, log_q = self.flow.sample_and_log_prob(key, cond=ChainRuleCond(x, cond))
        return jnp.concatenate([x, u.astype(x.dtype)], axis=-1), -log_q
