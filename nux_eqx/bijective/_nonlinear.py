"""Elementwise and simplex nonlinearities: `Tanh`, `Softplus`, `SoftmaxPP`."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._flow import AbstractBijection, ShapeError
from .._types import AnyShape, Cond, Key, Scalar, Vector


class Tanh(AbstractBijection):
    """`z = tanh(x)`, elementwise: `R -> (-1, 1)`.

    The contribution is `sum log(1 - tanh(x)^2) = sum 2 (log 2 - x - softplus(-2x))`,
    computed from `x` in both directions (stable for large `|x|`). The reverse direction
    takes `z` in `(-1, 1)`: `x = atanh(z)`. In float32, `tanh` rounds to `±1` for
    `|x| > 9` and loses digits well before that (`atanh(tanh(4))` is off by about `1e-4`),
    so keep the inputs moderate (an `ActNorm` before it helps) or work in float64.
    """

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        pre = jnp.arctanh(x) if reverse else x
        out = pre if reverse else jnp.tanh(x)
        log_det = 2.0 * (math.log(2.0) - pre - jax.nn.softplus(-2.0 * pre))
        return out, jnp.sum(log_det).astype(x.dtype)


def _inverse_softplus(z):
    # log(exp(z) - 1) = z + log(1 - exp(-z)), stable for large and small z > 0.
    return z + jnp.log(-jnp.expm1(-z))


class Softplus(AbstractBijection):
    """`z = softplus(x) = log(1 + exp(x))`, elementwise: `R -> (0, inf)`.

    The contribution is `sum log sigmoid(x)`; the reverse direction takes `z > 0`:
    `x = z + log(1 - exp(-z))`.
    """

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        pre = _inverse_softplus(x) if reverse else x
        out = pre if reverse else jax.nn.softplus(x)
        return out, jnp.sum(jax.nn.log_sigmoid(pre)).astype(x.dtype)


class SoftmaxPP(AbstractBijection):
    r"""Softmax++, the invertible Gaussian reparametrisation (Potapczynski, Loaiza-Ganem and
    Cunningham 2019; NuX's `SoftmaxPP`): `R^{K-1}` -> the interior of the `K`-simplex.

    For `x` in `R^{K-1}` let `S = sum_j exp(x_j / tau) + delta` with `delta = exp(log_delta)`.
    The probabilities are `p_k = exp(x_k / tau) / S` for `k < K` and `p_K = delta / S`.
    The layer outputs the **first `K - 1` coordinates** `z = (p_1, ..., p_{K-1})`, which
    determine `p_K = 1 - sum(z)`: it is a bijection from `R^{K-1}` onto the open set
    `{z > 0, sum(z) < 1}`. Reverse: `x_k = tau (log z_k - log(1 - sum z) + log_delta)`.

    **Log-determinant.** `dz/dx = (diag(z) - z z^T) / tau`, a `(K-1) x (K-1)` matrix. By the
    matrix determinant lemma `det(diag(z) - z z^T) = prod_k z_k (1 - sum_k z_k)`, so

    `log|det dz/dx| = -(K - 1) log tau + sum_{k=1}^{K} log p_k`
    `              = log_delta - (K - 1) log tau + sum_k x_k / tau - K log S`,

    the value NuX used (its README notes that the paper's log-determinant is incorrect).

    **Why `K - 1` outputs.** The simplex is a `(K-1)`-dimensional set; its standard
    densities (the Dirichlet, NuX's `UniformDirichletPrior`) are densities with respect to
    the Lebesgue measure of the first `K - 1` coordinates. With this layer, a prior on those
    coordinates gives a normalised density on `x`. (Reading the output as the full `K`-vector
    in `R^K` would make the layer injective with contribution `0.5 log det(J^T J)`, which
    is larger by the constant `0.5 log K`: the surface measure of the embedded simplex is
    `sqrt(K)` times the coordinate measure, so a Dirichlet density would then integrate to
    `sqrt(K)`.) Recover the last probability as `1 - z.sum()`.

    **Arguments:**

    - `tau`: the temperature, `> 0` (default 0.4, as NuX).
    - `log_delta`: `log delta`, the logit of the last category (default 0.0).
    """

    tau: float = eqx.field(static=True)
    log_delta: float = eqx.field(static=True)

    def __init__(self, tau: float = 0.4, log_delta: float = 0.0):
        tau, log_delta = float(tau), float(log_delta)
        if not (tau > 0 and math.isfinite(tau)):
            raise ValueError(f"SoftmaxPP: tau (the temperature) must be a finite number > 0, got {tau}.")
        if not math.isfinite(log_delta):
            raise ValueError(f"SoftmaxPP: log_delta must be finite, got {log_delta}.")
        self.tau, self.log_delta = tau, log_delta

    def init(self, x_batch, *, key, cond=None):
        if x_batch.ndim != 2:
            raise ShapeError(
                f"SoftmaxPP takes vectors (K - 1,), got examples of shape {tuple(x_batch.shape[1:])}; "
                "apply `Flatten()` first."
            )
        return self

    def transform(self, x: Vector, reverse: bool, *, key: Key, cond: Cond) -> tuple[Vector, Scalar]:
        tau, log_delta = self.tau, self.log_delta
        if reverse:
            y = tau * (jnp.log(x) - jnp.log1p(-jnp.sum(x)) + log_delta)
        else:
            y = x
        logits = jnp.concatenate([y / tau, jnp.full((1,), log_delta, y.dtype)])
        log_s = jax.nn.logsumexp(logits)
        km1 = y.shape[0]
        log_det = log_delta - km1 * math.log(tau) + jnp.sum(y) / tau - (km1 + 1) * log_s
        out = y if reverse else jnp.exp(logits[:-1] - log_s)
        return out, log_det.astype(x.dtype)
