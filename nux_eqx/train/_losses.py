"""Losses and metrics for training flows.

Every loss has the signature the training step expects,
`loss(flow, x_batch, *, key, cond) -> scalar`, acting on a BATCH (one leading axis);
flows act on one example, so the losses `jax.vmap` them with one key per example.

## Bits per dimension of dequantised discrete data

A flow for images of `L` integer levels starts with `UniformDequantization(scale=L)` and
`Logit(lmbda)` (as `MultiscaleGlow(dequantize=L)` builds it). Its forward contributions
are, for the integer levels `v` and noise `u ~ U[0, 1)^D`:

- dequantisation: `x = (v + u) / L`, contribution `-D log L` (the Jacobian of dividing
  by `L`);
- logit: `y = logit(lmbda + (1 - 2 lmbda) x)`, contribution `log|dy/dx|`
  (which includes `D log(1 - 2 lmbda)`);
- the rest of the flow and the prior: `log p(y)`.

The sum is `log p(y) + log|dy/dx| - D log L = log p_{v+u}(v + u)`: the density of the
dequantised levels `v + u` on `[0, L]^D`, whose expectation over `u` is a lower bound on
`log P(v)`. So `-log_prob / (D ln 2)` ([`bits_per_dim`][]) is already in bits per
discrete dimension, the unit of published results; no `D log L` needs adding (datasets
that state `-(log p(x) - D ln L) / (D ln 2)` with `x = (v + u) / L` compute the same
number, because there `log p(x)` lacks the `-D log L` term).
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._flow import AbstractFlow, check_cond_axis, check_key, compile_here, log_prob, sample
from .._maths import batch_keys, keyed_vmap
from ._jit import auto_compiler_options, example_ndim, filter_jit_with

Loss = Callable[..., Array]


def batch_log_prob(
    flow: AbstractFlow, x: Array, *, key: PRNGKeyArray | None = None, cond: PyTree = None
) -> Array:
    """`log p(x_i)` for every example of a batch (`jax.vmap` of [`nux_eqx.log_prob`][]).

    **Arguments:**

    - `flow`: an initialised flow.
    - `x`: a batch, one leading axis.
    - `key`: split into one key per example (needed by stochastic layers).
    - `cond`: batched conditioning (leading axis on every leaf) or `None`.

    **Returns:** an `(n,)` array.

    Called outside `jax.jit`, it compiles itself (cached per flow structure and shapes, with
    `compiler_options="auto"`: [`auto_compiler_options`][nux_eqx.train.auto_compiler_options]);
    inside a traced function it is part of that computation.
    """
    if compile_here(flow, x, key, cond):
        opts = auto_compiler_options(example_ndim(x, 1))
        return filter_jit_with(_batch_log_prob, opts)(flow, x, key, cond)
    return _batch_log_prob(flow, x, key, cond)


def _batch_log_prob(flow: AbstractFlow, x: Array, key: PRNGKeyArray | None, cond: PyTree) -> Array:
    def one(xi, ki, ci):
        return log_prob(flow, xi, key=ki, cond=ci)

    return keyed_vmap(one, x, batch_keys(key, x.shape[0]), cond)


def _is_count(v: Any) -> bool:
    """Whether `v` is a Python or NumPy int >= 1 (not a bool)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


def batch_sample(
    flow: AbstractFlow,
    key: PRNGKeyArray,
    n: int,
    *,
    cond: PyTree = None,
    temperature: float = 1.0,
    chunk_size: int | None = 512,
) -> tuple[Array, Array]:
    """Draw `n` examples: [`nux_eqx.sample`][] with the keys `jax.random.split(key, n)`,
    `chunk_size` examples at a time.

    The result is `jax.vmap(lambda k: nux_eqx.sample(flow, k, ...))(jax.random.split(key, n))`
    (up to float rounding), but the examples are drawn in a loop of chunks
    (`jax.lax.map(..., batch_size=chunk_size)`), so memory stays that of one chunk. On
    XLA:CPU it is also faster: 10 000 samples of the digits `MultiscaleGlow` in one vmap
    held ~190 MB of buffers and ran at ~13 000 samples/s; in chunks of 512, ~20 MB and
    ~19 000 samples/s.

    **Arguments:**

    - `flow`: an initialised flow that can sample (it ends in a prior).
    - `key`: a PRNG key.
    - `n`: the number of examples (a Python int >= 1).
    - `cond`: per-example conditioning, a leading axis of size `n` on every leaf, or `None`.
    - `temperature`: as for [`nux_eqx.sample`][].
    - `chunk_size`: examples per chunk (default 512); `None` draws all `n` in one vmap.

    **Returns:** `(x, log_q)`: the samples `(n, *flow.in_shape)` and their log-densities `(n,)`.

    Called outside `jax.jit`, it compiles itself (cached per flow structure, `n`, `cond`'s
    shapes, `temperature` and `chunk_size`, with `compiler_options="auto"`:
    [`auto_compiler_options`][nux_eqx.train.auto_compiler_options]).

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (128, 2))
        flow = nux.init(nux.RealNVP(2, (16,)), x, key=jax.random.key(1))
        xs, log_q = nux.train.batch_sample(flow, jax.random.key(2), 1000, chunk_size=256)
        print(xs.shape, log_q.shape)                                   # (1000, 2) (1000,)
        ```
    """
    if isinstance(n, jax.core.Tracer):
        raise ValueError(
            "batch_sample: `n` (the number of examples) must be a Python int, not a traced value: "
            "under `jax.jit` mark it static (`static_argnames='n'`), or use `eqx.filter_jit`."
        )
    if not _is_count(n):
        raise ValueError(f"batch_sample: `n` must be a Python int >= 1 (the number of examples), got {n!r}.")
    if chunk_size is not None and not _is_count(chunk_size):
        raise ValueError(
            f"batch_sample: `chunk_size` must be an int >= 1 (examples per chunk) or None (all at once), "
            f"got {chunk_size!r}."
        )
    check_key("batch_sample", key, batch_hint=False)
    n = int(n)
    if cond is not None:
        check_cond_axis(
            "batch_sample", cond, f"a leading axis of size n={n} (one conditioning per example)", n
        )
    if compile_here(flow, key, cond):
        opts = auto_compiler_options(len(flow.in_shape) if flow.is_initialised else None)
        return filter_jit_with(_batch_sample, opts)(flow, key, n, cond, temperature, chunk_size)
    return _batch_sample(flow, key, n, cond, temperature, chunk_size)


def _batch_sample(
    flow: AbstractFlow, key: PRNGKeyArray, n: int, cond: PyTree, temperature: float, chunk_size: int | None
) -> tuple[Array, Array]:
    keys = jr.split(key, n)

    def one(args):
        k, c = args
        return sample(flow, k, cond=c, temperature=temperature)

    if chunk_size is None or chunk_size >= n:
        return jax.vmap(one)((keys, cond))
    return jax.lax.map(one, (keys, cond), batch_size=int(chunk_size))


def nll(flow: AbstractFlow, x: Array, *, key: PRNGKeyArray | None = None, cond: PyTree = None) -> Array:
    """The mean negative log-likelihood of a batch, in nats per example: the default loss.

    For flows with stochastic layers (dequantisation, surjections) this is the negative
    of the single-sample bound.

    **Returns:** a scalar.
    """
    return -jnp.mean(batch_log_prob(flow, x, key=key, cond=cond))


def bits_per_dim(nll_nats: float | Array, dims: int | tuple[int, ...]) -> float | Array:
    """Convert a negative log-likelihood in nats per example to bits per dimension.

    `nll / (D ln 2)`, with `D` the number of dimensions of one example. For a flow that
    starts with `UniformDequantization(scale=L)` (and `Logit`), the result is already in
    bits per discrete dimension (see the module notes).

    **Arguments:**

    - `nll_nats`: the NLL (a number or an array).
    - `dims`: `D`, or the shape of one example.

    **Returns:** the same type as `nll_nats`.
    """
    d = math.prod(dims) if isinstance(dims, (tuple, list)) else int(dims)
    return nll_nats / (d * math.log(2.0))


def importance_weighted_nll(
    flow: AbstractFlow,
    x: Array,
    *,
    key: PRNGKeyArray,
    cond: PyTree = None,
    K: int = 8,
) -> Array:
    """The importance-weighted bound for flows with stochastic layers, as a loss.

    For each example, `K` independent keys give `K` single-sample bounds `log w_k` (the
    summed contributions of a forward pass); the IW bound is
    `logsumexp_k(log w_k) - log K`, tighter than their mean and equal to `log p(x)` as
    `K -> infinity`. Generic: it only needs the flow's forward pass to depend on the key.

    **Arguments:**

    - `flow`, `x`, `cond`: as for [`nll`][].
    - `key`: required; split into `K` keys per example.
    - `K`: the number of importance samples.

    **Returns:** the negative mean IW bound over the batch (a scalar).
    """
    if key is None:
        raise ValueError("importance_weighted_nll needs a PRNG key (it averages over K keys).")
    if K < 1:
        raise ValueError(f"importance_weighted_nll: K must be >= 1, got {K}.")
    keys = jr.split(key, K)
    log_w = jax.vmap(lambda k: batch_log_prob(flow, x, key=k, cond=cond))(keys)  # (K, n)
    bound = jax.nn.logsumexp(log_w, axis=0) - math.log(K)
    return -jnp.mean(bound)


def reverse_kl(
    flow: AbstractFlow,
    log_target: Callable[[Array], Array],
    *,
    key: PRNGKeyArray,
    n_samples: int = 256,
    cond: PyTree = None,
) -> Array:
    """The reverse KL to an unnormalised target, for variational fitting.

    `KL(q || p) + log Z = E_{x ~ q}[log q(x) - log p~(x)]`, estimated with `n_samples`
    reparameterised samples of the flow ([`nux_eqx.sample`][] under `jax.vmap`, so the
    gradient flows through the samples). It is `>= -log Z`, with equality when the flow
    matches the target.

    **Arguments:**

    - `flow`: an initialised flow ending in a prior.
    - `log_target`: `x -> log p~(x)` for ONE example (unnormalised).
    - `key`: a PRNG key.
    - `n_samples`: the Monte-Carlo sample size.
    - `cond`: one conditioning, shared by every sample, or `None`.

    **Returns:** a scalar.
    """
    keys = jr.split(key, n_samples)
    x, log_q = jax.vmap(lambda k: sample(flow, k, cond=cond))(keys)
    return jnp.mean(log_q - jax.vmap(log_target)(x))


def reverse_kl_loss(log_target: Callable[[Array], Array], n_samples: int = 256) -> Loss:
    """[`reverse_kl`][] as a loss for [`make_step`][]: `loss(flow, x, *, key, cond)`
    ignores `x` (pass `None`)."""

    def loss(flow, x, *, key, cond=None):
        return reverse_kl(flow, log_target, key=key, n_samples=n_samples, cond=cond)

    return loss
