"""Invertible residual flows (i-ResNet, Behrmann et al. 2019; Residual Flows, Chen et al.
2019): `z = x + g(x)` with a contractive `g` built from spectrally normalised dense or
convolutional layers and 1-Lipschitz activations.

**Spectral normalisation and its state.** Each layer of `g` keeps its weight `W` and,
as a [`nux_eqx.NonTrainable`][] leaf, `u`: the current estimate of `W`'s top right
singular vector (for a convolution, of the convolution OPERATOR on the example's shape,
an image-shaped vector). Every call runs `n_power_iterations` steps of power iteration
from the stored `u` on `stop_gradient(W)`, then takes `σ = vᵀ W u` (differentiable in
`W`, as in Miyato et al.) and uses `W / max(1, σ / coeff)`. The stored `u` never changes
inside a call, so a layer stays a pure function of its pytree and works under `jit`,
`vmap` and `grad` (the power iteration depends on the parameters only, so under `vmap`
it runs once, not per example). `init` converges `u` with many iterations; after
training steps move `W`, [`nux_eqx.update_spectral_state`][] (pure: flow in, flow out)
writes the iterated vectors back, so the per-call iterations start warm. Calling it is
optional for correctness of the density: whatever `σ` the call computes, the map and
its log-determinant are consistent; it only keeps the estimate of `σ` tight, which keeps
`Lip(g) <= coeff < 1` (and so the inverse) guaranteed. Call it every few hundred steps
and before evaluation or sampling.
"""

import math
from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._context import loop_body
from .._flow import NonTrainable, ShapeError
from .._types import AnyShape, Cond, Key, Scalar
from ..nn import cast_floating, cond_features
from ..nn._nets import conv_same
from ._stochastic_logdet import AbstractEstimableFlow

_INIT_POWER_ITERATIONS = 100


def _normalise(v: Array) -> Array:
    return v / (jnp.sqrt(jnp.sum(v * v)) + 1e-12)


class LipSwish(eqx.Module):
    """Chen et al.'s 1-Lipschitz activation `x * sigmoid(β x) / 1.1`, `β = softplus(b)`
    learned (one per layer).

    **Arguments:**

    - `dtype`: the parameter's dtype.
    """

    b: Float[Array, ""]

    def __init__(self, dtype=jnp.float32):
        self.b = jnp.asarray(0.5413, dtype)  # softplus(0.5413) = 1.0

    def __call__(self, x: Array) -> Array:
        beta = jax.nn.softplus(self.b)
        return x * jax.nn.sigmoid(beta * x) / 1.1


class _SpectralLayer(eqx.Module):
    """A dense (`kernel` 2-D, `(out, in)`) or channels-last 'SAME' convolution (`kernel`
    4-D, HWIO) layer whose operator norm is normalised to at most `coeff`."""

    kernel: Array
    bias: Array
    u: NonTrainable
    coeff: float = eqx.field(static=True)
    n_power_iterations: int = eqx.field(static=True)

    def _apply(self, kernel: Array, x: Array) -> Array:
        if kernel.ndim == 2:
            return kernel @ x
        return conv_same(x, kernel)  # patch matmuls inside the estimator's loop (CPU)

    def power_iterate(self, n: int) -> tuple[Array, Array]:
        """`n` power-iteration steps from the stored `u` on `stop_gradient(kernel)`.

        **Returns:** `(u, v)`, the right and left singular vector estimates (no gradient)."""
        k = lax.stop_gradient(self.kernel)
        u0 = self.u.get()
        apply = lambda x: self._apply(k, x)  # noqa: E731
        apply_t = jax.linear_transpose(apply, u0)

        def body(_, u):
            v = _normalise(apply(u))
            return _normalise(apply_t(v)[0])

        u = lax.fori_loop(0, n, body, u0)
        return u, _normalise(apply(u))

    def sigma(self) -> Array:
        """The estimated operator norm `vᵀ W u` (differentiable in `W`)."""
        u, v = self.power_iterate(self.n_power_iterations)
        return jnp.vdot(v, self._apply(self.kernel, u))

    def normalised_kernel(self) -> Array:
        return self.kernel / jnp.maximum(1.0, self.sigma() / self.coeff)

    def __call__(self, x: Array) -> Array:
        return self._apply(self.normalised_kernel(), x) + self.bias


def _spectral_layer(kernel, in_like_shape, coeff, n_power, key) -> _SpectralLayer:
    dtype = kernel.dtype
    out = kernel.shape[0] if kernel.ndim == 2 else kernel.shape[-1]
    u0 = _normalise(jr.normal(key, in_like_shape, dtype))
    layer = _SpectralLayer(kernel, jnp.zeros((out,), dtype), NonTrainable(u0), coeff, n_power)
    u, _ = layer.power_iterate(_INIT_POWER_ITERATIONS)
    return eqx.tree_at(lambda s: s.u, layer, NonTrainable(u))


class LipschitzNetwork(eqx.Module):
    """The residual branch `g` of [`nux_eqx.ResidualFlow`][]: spectrally normalised layers
    (each with operator norm at most `coeff`) and 1-Lipschitz [`nux_eqx.LipSwish`][]
    activations, so `Lip(g) <= coeff`. Dense for vectors, 3x3 / 1x1 / 3x3 'SAME'
    convolutions (channels-last) for images.

    Conditioning features are concatenated to the input of the first layer; the
    normalisation bounds the whole first layer, so `g` stays `coeff`-Lipschitz in `x` for
    every `cond`.

    **Arguments:**

    - `shape`: the example shape, `(d,)` or `(h, w, c)`.
    - `n_cond`: conditioning features (0 without).
    - `hidden_layer_sizes`: widths of the hidden dense layers (vectors).
    - `n_channels`: hidden channels (images).
    - `coeff`: the Lipschitz bound of each layer (< 1).
    - `n_power_iterations`: power-iteration steps per call.
    - `dtype`: the parameters' dtype.
    - `key`: a PRNG key.
    """

    layers: tuple[_SpectralLayer, ...]
    activations: tuple[LipSwish, ...]
    shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        shape: tuple[int, ...],
        n_cond: int = 0,
        hidden_layer_sizes: Sequence[int] = (64, 64),
        n_channels: int = 64,
        coeff: float = 0.9,
        n_power_iterations: int = 5,
        dtype=jnp.float32,
        *,
        key: PRNGKeyArray,
    ):
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) == 1:
            sizes = (self.shape[0] + n_cond, *hidden_layer_sizes, self.shape[0])
            keys = jr.split(key, 2 * (len(sizes) - 1))
            layers = []
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
                lim = 1.0 / math.sqrt(a)
                w = jr.uniform(keys[2 * i], (b, a), dtype, -lim, lim)
                layers.append(_spectral_layer(w, (a,), coeff, n_power_iterations, keys[2 * i + 1]))
        elif len(self.shape) == 3:
            h, w_, c = self.shape
            chans = (c + n_cond, n_channels, n_channels, c)
            ks = (3, 1, 3)
            keys = jr.split(key, 6)
            layers = []
            for i in range(3):
                a, b, k = chans[i], chans[i + 1], ks[i]
                lim = 1.0 / math.sqrt(k * k * a)
                w = jr.uniform(keys[2 * i], (k, k, a, b), dtype, -lim, lim)
                layers.append(_spectral_layer(w, (h, w_, a), coeff, n_power_iterations, keys[2 * i + 1]))
        else:
            raise ShapeError(
                f"ResidualFlow takes vectors (d,) or images (h, w, c), got examples of shape {shape}."
            )
        self.layers = tuple(layers)
        self.activations = tuple(LipSwish(dtype) for _ in layers[:-1])

    def __call__(self, x: Array, feats: Array | None = None) -> Array:
        h = x if feats is None else jnp.concatenate([x, feats.astype(x.dtype)], axis=-1)
        for layer, act in zip(self.layers[:-1], self.activations):
            h = act(layer(h))
        return self.layers[-1](h)


def update_spectral_state(flow: PyTree, n_iterations: int = 10) -> PyTree:
    """Refresh the power-iteration vectors of every spectrally normalised layer in `flow`.

    Pure: returns a new flow whose stored vectors `u` are advanced by `n_iterations`
    power-iteration steps on the current weights, so the next calls (which iterate
    `n_power_iterations` more times from them) estimate `σ(W)` tightly. Jit it with
    `eqx.filter_jit`; call it after blocks of training steps in a loop of your own
    (`nux_eqx.train.fit` and `make_step` advance the vectors one step after every update)
    and before evaluation.

    **Arguments:**

    - `flow`: any pytree holding flows.
    - `n_iterations`: power-iteration steps.

    **Returns:** the flow with refreshed vectors (nothing else changes).
    """
    is_layer = lambda n: isinstance(n, _SpectralLayer)  # noqa: E731

    def refresh(n):
        if not is_layer(n):
            return n
        if n.bias.ndim > 1:  # stacked by Repeat / vmap
            return eqx.filter_vmap(lambda m: refresh(m))(n)
        u, _ = n.power_iterate(n_iterations)
        return eqx.tree_at(lambda s: s.u, n, NonTrainable(u))

    return jax.tree.map(refresh, flow, is_leaf=is_layer)


def _geometric_tail(k: Array, n_exact: int, p: float) -> Array:
    """`P(N >= k)` for `N = n_exact + G`, `G ~ Geometric(p)` on {0, 1, ...}."""
    return jnp.where(k <= n_exact, 1.0, (1.0 - p) ** jnp.maximum(k - n_exact, 0))


class ResidualFlow(AbstractEstimableFlow):
    """An invertible residual block `z = x + g(x)` (i-ResNet, Behrmann et al. 2019;
    Residual Flows, Chen et al. 2019), for vectors (dense `g`) and channels-last images
    (convolutional `g`).

    `g` is a [`nux_eqx.LipschitzNetwork`][]: spectrally normalised layers (operator norm
    at most `coeff < 1`; see the module notes and [`nux_eqx.update_spectral_state`][] for
    how the power-iteration state is kept as a pure pytree) and LipSwish activations, so
    `Lip(g) <= coeff` and the block is invertible.

    **Inverse.** `x = z - g(x)` by `n_fixed_point` steps of the fixed-point iteration
    `x_{k+1} = z - g(x_k)` from `x_0 = z`: a fixed count, so it runs under `jit`, `vmap`
    and reverse-mode `grad`. Its error is at most `Lip(g)^n |g(x)|` (`coeff^n`: `2.7e-5`
    relative for the defaults `coeff = 0.9`, `n = 100`, far less in practice since a
    product of per-layer bounds overestimates `Lip(g)`).

    **Log-determinant.** This layer computes the exact `log det(I + ∂g/∂x)` from the
    brute-force Jacobian (one JVP per dimension and a determinant): use it for evaluation
    and small dimensions (it is an ordinary bijection, checked by `check_flow`). For
    training in higher dimensions wrap it in [`nux_eqx.StochasticLogDet`][] (or call
    [`nux_eqx.stochastic_log_det`][]): the contribution is then the Russian-roulette
    estimate of the power series `Σ_k (-1)^{k+1} tr(J^k) / k` (Chen et al.): the first
    `n_exact_terms` terms always, then term `k` with probability `P(N >= k)` for a
    geometric `N` (parameter `p`), reweighted by `1 / P(N >= k)`, with Hutchinson's
    `vᵀ J^k v` for the traces (one JVP per term). It is unbiased up to the cap of
    `max_terms` terms (a static bound, so it compiles to a fixed loop): the bias is at
    most the series' tail, `d Lip(g)^(m+1) / ((m + 1)(1 - Lip(g)))` for `m = max_terms`.

    Compose blocks with [`nux_eqx.ActNorm`][] between them as Chen et al. do.

    **Arguments:**

    - `hidden_layer_sizes`: widths of `g`'s hidden layers (vectors).
    - `n_channels`: hidden channels of `g` (images).
    - `coeff`: the Lipschitz bound of each layer of `g` (default 0.9; must be < 1).
    - `n_power_iterations`: power-iteration steps per call (default 5).
    - `n_fixed_point`: fixed-point steps of the inverse (default 100).
    - `n_exact_terms`, `p`, `max_terms`: the Russian-roulette estimator (defaults 2,
      0.5, 20).
    - `noise`: the trace probe, `"rademacher"` (default) or `"gaussian"`.
    """

    network: LipschitzNetwork | None
    hidden_layer_sizes: tuple[int, ...] = eqx.field(static=True)
    n_channels: int = eqx.field(static=True)
    coeff: float = eqx.field(static=True)
    n_power_iterations: int = eqx.field(static=True)
    n_fixed_point: int = eqx.field(static=True)
    n_exact_terms: int = eqx.field(static=True)
    p: float = eqx.field(static=True)
    max_terms: int = eqx.field(static=True)
    noise: str = eqx.field(static=True)

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (64, 64),
        n_channels: int = 64,
        *,
        coeff: float = 0.9,
        n_power_iterations: int = 5,
        n_fixed_point: int = 100,
        n_exact_terms: int = 2,
        p: float = 0.5,
        max_terms: int = 20,
        noise: Literal["rademacher", "gaussian"] = "rademacher",
    ):
        if not 0 < float(coeff) < 1:
            raise ValueError(f"ResidualFlow: coeff must be in (0, 1) for g to be contractive, got {coeff}.")
        if not 0 < float(p) < 1:
            raise ValueError(f"ResidualFlow: p must be in (0, 1), got {p}.")
        if int(n_power_iterations) < 1 or int(n_fixed_point) < 1:
            raise ValueError("ResidualFlow: n_power_iterations and n_fixed_point must be >= 1.")
        if not 0 <= int(n_exact_terms) <= int(max_terms) or int(max_terms) < 1:
            raise ValueError(
                f"ResidualFlow: need 0 <= n_exact_terms <= max_terms and max_terms >= 1, got "
                f"n_exact_terms={n_exact_terms}, max_terms={max_terms}."
            )
        if noise not in ("rademacher", "gaussian"):
            raise ValueError(f"ResidualFlow: noise must be 'rademacher' or 'gaussian', got {noise!r}.")
        self.network = None
        self.hidden_layer_sizes = tuple(int(h) for h in hidden_layer_sizes)
        self.n_channels = int(n_channels)
        self.coeff = float(coeff)
        self.n_power_iterations = int(n_power_iterations)
        self.n_fixed_point = int(n_fixed_point)
        self.n_exact_terms = int(n_exact_terms)
        self.p = float(p)
        self.max_terms = int(max_terms)
        self.noise = noise

    def init(self, x_batch, *, key, cond=None):
        shape = tuple(x_batch.shape[1:])
        if len(shape) not in (1, 3):
            raise ShapeError(
                f"ResidualFlow takes vectors (d,) or images (h, w, c), got examples of shape {shape}."
            )
        c0 = None if cond is None else jax.tree.map(lambda a: a[0], cond)
        feats = cond_features(c0, shape)
        n_cond = 0 if feats is None else int(feats.shape[-1])
        net = LipschitzNetwork(
            shape,
            n_cond,
            self.hidden_layer_sizes,
            self.n_channels,
            self.coeff,
            self.n_power_iterations,
            x_batch.dtype,
            key=key,
        )
        return eqx.tree_at(
            lambda s: s.network, self, cast_floating(net, x_batch.dtype), is_leaf=lambda v: v is None
        )

    def _g(self, cond) -> Callable[[Array], Array]:
        shape = self.in_shape
        feats = cond_features(cond, shape)
        net = self.network

        def g(v):
            return net(v.reshape(shape), feats).reshape(-1)

        return g

    def _inverse(self, g: Callable, z: Array) -> Array:
        return lax.fori_loop(0, self.n_fixed_point, lambda _, x: z - g(x), z)

    def _exact_log_det(self, g: Callable, x: Array) -> Array:
        _, jvp = jax.linearize(g, x)
        J = jax.vmap(jvp)(jnp.eye(x.shape[0], dtype=x.dtype)).T
        return jnp.linalg.slogdet(jnp.eye(x.shape[0], dtype=x.dtype) + J)[1]

    def _estimate_log_det(self, g: Callable, x: Array, key: PRNGKeyArray) -> tuple[Array, Array]:
        """`(g(x), estimate)`: one linearisation gives both."""
        k_v, k_n = jr.split(key)
        d = x.shape[0]
        v = jr.rademacher(k_v, (d,), x.dtype) if self.noise == "rademacher" else jr.normal(k_v, (d,), x.dtype)
        u = jr.uniform(k_n, (), x.dtype, minval=jnp.finfo(x.dtype).tiny, maxval=1.0)
        n = self.n_exact_terms + jnp.floor(jnp.log(u) / math.log(1.0 - self.p))
        gx, jvp = jax.linearize(g, x)

        def body(w, k):
            w = jvp(w)  # J^k v
            term = (-1.0) ** (k + 1) / k * jnp.vdot(v, w) / _geometric_tail(k, self.n_exact_terms, self.p)
            return w, jnp.where(k <= n, term, 0.0).astype(x.dtype)

        ks = jnp.arange(1, self.max_terms + 1, dtype=x.dtype)
        _, terms = lax.scan(body, v, ks)
        return gx, jnp.sum(terms)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        g = self._g(cond)
        flat = x.reshape(-1)
        if reverse:
            xs = self._inverse(g, flat)
            return xs.reshape(x.shape), self._exact_log_det(g, xs)
        return (flat + g(flat)).reshape(x.shape), self._exact_log_det(g, flat)

    def transform_estimate(self, x, reverse, *, key, cond):
        g = self._g(cond)
        flat = x.reshape(-1)
        # traced as a loop body: the estimator's scan runs J's JVP (and, under grad, its
        # transpose) once per term, where convolutions are faster as patch matmuls on CPU
        with loop_body():
            if reverse:
                xs = self._inverse(g, flat)
                return xs.reshape(x.shape), self._estimate_log_det(g, xs, key)[1]
            gx, log_det = self._estimate_log_det(g, flat, key)
        return (flat + gx).reshape(x.shape), log_det

    def lipschitz_bound(self) -> Array:
        """The product of the layers' normalised operator norms, each computed to
        convergence (a bound on `Lip(g)`; should be `<= coeff`)."""
        out = jnp.ones(())
        for layer in self.network.layers:
            w = layer.normalised_kernel()
            full = eqx.tree_at(lambda s: s.kernel, layer, w)
            u, v = full.power_iterate(500)
            out = out * jnp.vdot(v, full._apply(w, u))
        return out
