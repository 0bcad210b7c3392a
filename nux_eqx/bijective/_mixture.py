"""Flow++'s logistic-mixture CDF transformer (Ho et al. 2019): the function
`logistic_mixture_logit` and the elementwise layer `LogisticMixtureCDF`, a transformer for
`Coupling` and `MaskedAutoregressive`.

Every formula is in log space (`log_sigmoid`, `logsumexp`), so the forward map and its
log-derivative are finite for any finite parameters; the inverse is a bisection on a
bracket that always holds the root, with a fixed number of steps (`jit` / `vmap` safe).
"""

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._flow import AbstractBijection
from .._types import AnyShape, Cond, Key, Scalar
from ._roots import bisect

# Flow++ clamps the components' log-scales from below at -7; a symmetric bound keeps
# exp(-log_scale) finite in float32 for any parameter value.
_LOG_SCALE_BOUND = 7.0
_SOFTPLUS_MIN = 1e-3
_LOG_A_BOUND = 15.0


def _mixture_terms(x, logits, means, log_scales):
    """`(log F, log(1 - F), log f)` of the logistic mixture at `x` (elementwise over the
    leading axes; components on the last axis)."""
    ls = jnp.clip(log_scales, -_LOG_SCALE_BOUND, _LOG_SCALE_BOUND)
    log_pi = jax.nn.log_softmax(logits, axis=-1)
    t = (x[..., None] - means) * jnp.exp(-ls)
    lo, hi = jax.nn.log_sigmoid(t), jax.nn.log_sigmoid(-t)
    log_f = jax.nn.logsumexp(log_pi + lo + hi - ls, axis=-1)
    return jax.nn.logsumexp(log_pi + lo, axis=-1), jax.nn.logsumexp(log_pi + hi, axis=-1), log_f


def _log_scale(u, scale: str):
    if scale == "exp":
        # Clipped so that exp stays finite in float32 for any parameter value.
        return jnp.clip(u, -_LOG_A_BOUND, _LOG_A_BOUND)
    return jnp.log(jax.nn.softplus(u) + _SOFTPLUS_MIN)


def logistic_mixture_logit(
    x: Float[Array, "*batch"],
    logits: Float[Array, "*batch K"],
    means: Float[Array, "*batch K"],
    log_scales: Float[Array, "*batch K"],
    *,
    inverse: bool = False,
    n_bisection: int = 40,
) -> tuple[Float[Array, "*batch"], Float[Array, "*batch"]]:
    """The inverse sigmoid of a mixture of `K` logistic CDFs, elementwise:
    `g(x) = logit F(x)`, `F(x) = sum_k pi_k sigmoid((x - mu_k) / s_k)`,
    `pi = softmax(logits)`, `s_k = exp(log_scales_k)` (log-scales clipped to `[-7, 7]`).

    `g` is a strictly increasing bijection of `R` (`g(x) ~ (x - mu_k) / s_k` in each tail).
    It is evaluated as `logsumexp(log pi + log_sigmoid(t)) - logsumexp(log pi +
    log_sigmoid(-t))`, finite for any parameter values.

    **The inverse** solves `g(x) = y` by bisection. Since `F(x)` is a convex combination of
    the components' CDFs, `min_k (x - mu_k)/s_k <= g(x) <= max_k (x - mu_k)/s_k`, so the
    root lies in `[min_k (mu_k + s_k y), max_k (mu_k + s_k y)]`; `n_bisection` halvings of
    that bracket (a `lax.fori_loop`, so it works under `jit` and `vmap`) are followed by one
    Newton step kept inside the final bracket. The error after the bisection is at most
    `width * 2**-n_bisection`, and the Newton step squares it. Measured (K = 8, logits and
    means ~ N(0, 1), log-scales ~ N(0, 0.5^2), |x| <= 5, 2000 points; checked in
    `tests/test_mixture.py`): the round trip `x -> g -> g^-1` is off by at most 1.4e-6 in
    float32 and 5e-15 in float64 with the default 40 steps (20 steps: 1.4e-6 / 1e-11; 10
    steps: 7e-6 in both). The backward error `|g(x_hat) - y| / (1 + |y|)` is at rounding
    level (<= 2.5e-7 in float32, <= 1e-15 in float64) even for wild parameters (log-scales
    ~ N(0, 4), |x| <= 20), where float32's x error can reach 3e-4 only because `g` is
    very flat there and the forward map itself rounds `y`. Gradients of the inverse are
    those of the implicit function (`dx/dtheta = -(dg/dtheta) / g'(x)`), not of the
    bisection.

    **Arguments:**

    - `x`: the inputs (`y` when `inverse=True`).
    - `logits`, `means`, `log_scales`: `(..., K)` unconstrained mixture parameters,
      broadcastable against `x[..., None]`.
    - `inverse`: evaluate `g^{-1}`.
    - `n_bisection`: the number of bisection steps of the inverse (static).

    **Returns:** `(out, log_det)`, shaped like `x`: `g(x)` (or `g^{-1}(y)`) and
    `log g'` at the forward-side point (the same value in both directions).
    """
    shape = jnp.broadcast_shapes(x.shape, logits.shape[:-1], means.shape[:-1], log_scales.shape[:-1])
    x = jnp.broadcast_to(x, shape)

    def g_and_log_dg(v):
        log_F, log_1mF, log_f = _mixture_terms(v, logits, means, log_scales)
        return log_F - log_1mF, log_f - log_F - log_1mF

    if not inverse:
        return g_and_log_dg(x)

    y = x
    sg = jax.lax.stop_gradient
    s_k = jnp.exp(jnp.clip(sg(log_scales), -_LOG_SCALE_BOUND, _LOG_SCALE_BOUND))
    ends = sg(means) + s_k * sg(y)[..., None]
    lo, hi = jnp.min(ends, axis=-1), jnp.max(ends, axis=-1)
    p_sg = (sg(logits), sg(means), sg(log_scales))

    def residual(v):
        log_F, log_1mF, log_f = _mixture_terms(v, *p_sg)
        return log_F - log_1mF - sg(y), log_f - log_F - log_1mF

    lo, hi = bisect(lambda v: residual(v)[0], jnp.zeros_like(lo), lo, hi, int(n_bisection))
    mid = 0.5 * (lo + hi)
    r, log_dg = residual(mid)
    step = r * jnp.exp(-log_dg)
    polished = jnp.clip(mid - jnp.where(jnp.isfinite(step), step, 0.0), lo, hi)
    # The value is `polished`; the gradient is the implicit function's.
    g, log_dg = g_and_log_dg(polished)
    r = g - y  # zero up to rounding; its gradients in (theta, y) give dx = -dr / g'
    out = polished - (r - sg(r)) * sg(jnp.exp(-log_dg))
    return out, log_dg


class LogisticMixtureCDF(AbstractBijection):
    """Flow++'s logistic-mixture CDF transformer (Ho et al. 2019; NuX's
    `LogisticMixtureLogit` / `LogisticCDFMixtureLogit`), elementwise:

    `z = logit(sum_k pi_k sigmoid((x - mu_k) / s_k)) * a + b`

    with `pi = softmax(logits)`, `s_k = exp(log_scales_k)`, `a = exp(u)` (`scale="exp"`,
    Flow++'s; `u` clipped to `[-15, 15]`) or `softplus(u) + 1e-3`, all parameters stored
    unconstrained. The
    contribution is `sum log g'(x) + log a` (see [`nux_eqx.logistic_mixture_logit`][] for
    the log-space formulas, finite for any parameters, and the inverse: a bisection on a
    bracket that always contains the root, `n_bisection` steps then one Newton step;
    round-trip error about 1e-6 in float32, 1e-14 in float64 for moderate parameters).

    As a transformer, `Coupling(LogisticMixtureCDF(K=8), mask="checkerboard")` is Flow++'s
    coupling (its network gives each feature's `3K + 2` parameters: `K` logits, `K` means,
    `K` log-scales, then the shift `b` and the scale parameter `u`), and
    `MaskedAutoregressive(LogisticMixtureCDF(K=4))` an autoregressive version. The means
    start spread over `[-1, 1]` (with equal components every one would get the same
    gradient and stay equal), the log-scales at 0, `a = 1`, `b = 0`; the map then starts
    close to the identity (exactly it for `K = 1`).

    **Arguments:**

    - `K`: the number of logistic components (an integer >= 1; default 8; Flow++ used 32
      on CIFAR-10).
    - `scale`: `"exp"` (default) or `"softplus"`: how `u` gives the scale `a`.
    - `n_bisection`: the bisection steps of the inverse (default 40).
    """

    logits: Array | None
    means: Array | None
    log_scales: Array | None
    shift: Array | None
    scale_param: Array | None
    K: int = eqx.field(static=True)
    scale: Literal["exp", "softplus"] = eqx.field(static=True)
    n_bisection: int = eqx.field(static=True)

    def __init__(self, K: int = 8, *, scale: Literal["exp", "softplus"] = "exp", n_bisection: int = 40):
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(
                f"LogisticMixtureCDF: K (the number of components) must be an integer >= 1, got {K!r}."
            )
        if scale not in ("exp", "softplus"):
            raise ValueError(f"LogisticMixtureCDF: scale must be 'exp' or 'softplus', got {scale!r}.")
        if isinstance(n_bisection, bool) or not isinstance(n_bisection, int) or n_bisection < 1:
            raise ValueError(
                f"LogisticMixtureCDF: n_bisection must be a positive integer (bisection steps of the inverse), "
                f"got {n_bisection!r}."
            )
        self.K, self.scale, self.n_bisection = K, scale, n_bisection
        self.logits = self.means = self.log_scales = self.shift = self.scale_param = None

    def init(self, x_batch, *, key, cond=None):
        shape, dt = tuple(x_batch.shape[1:]), x_batch.dtype
        means = jnp.linspace(-1.0, 1.0, self.K, dtype=dt) if self.K > 1 else jnp.zeros((1,), dt)
        u0 = 0.0 if self.scale == "exp" else math.log(math.expm1(1.0 - _SOFTPLUS_MIN))
        new = (
            jnp.zeros((*shape, self.K), dt),
            jnp.broadcast_to(means, (*shape, self.K)),
            jnp.zeros((*shape, self.K), dt),
            jnp.zeros(shape, dt),
            jnp.full(shape, u0, dt),
        )
        return eqx.tree_at(
            lambda s: (s.logits, s.means, s.log_scales, s.shift, s.scale_param),
            self,
            new,
            is_leaf=lambda v: v is None,
        )

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        log_a = _log_scale(self.scale_param, self.scale)
        if reverse:
            y = (x - self.shift) * jnp.exp(-log_a)
            out, log_dg = logistic_mixture_logit(
                y, self.logits, self.means, self.log_scales, inverse=True, n_bisection=self.n_bisection
            )
        else:
            g, log_dg = logistic_mixture_logit(x, self.logits, self.means, self.log_scales)
            out = g * jnp.exp(log_a) + self.shift
        return out, jnp.sum(log_dg + jnp.broadcast_to(log_a, x.shape))
