"""Elementwise bijections: `Identity`, `Scale`, `LeakyReLU`, `Logit`, `Sigmoid`."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._flow import AbstractBijection
from .._types import AnyShape, Cond, Key, Scalar


class Identity(AbstractBijection):
    """`z = x`, contribution 0."""

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        return x, jnp.zeros((), x.dtype)


class Scale(AbstractBijection):
    """`z = x / tau` with a fixed `tau` (NuX's `Scale`); contribution `-D log tau`.

    **Arguments:**

    - `tau`: a positive constant.
    """

    tau: float = eqx.field(static=True)

    def __init__(self, tau: float):
        tau = float(tau)
        if not tau > 0 or not math.isfinite(tau):
            raise ValueError(f"Scale: tau must be a positive finite number, got {tau}.")
        self.tau = tau

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        z = x * self.tau if reverse else x / self.tau
        return z, jnp.asarray(-x.size * math.log(self.tau), x.dtype)


class LeakyReLU(AbstractBijection):
    """`z = x` for `x >= 0`, `alpha * x` otherwise; contribution `sum log alpha` over negatives.

    **Arguments:**

    - `alpha`: the slope for negative inputs, in `(0, 1]` (default 0.01).
    """

    alpha: float = eqx.field(static=True)

    def __init__(self, alpha: float = 0.01):
        if not 0 < alpha:
            raise ValueError(f"LeakyReLU: alpha must be > 0 to be invertible, got {alpha}.")
        self.alpha = float(alpha)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        neg = x < 0  # the sign is the same on both sides
        z = jnp.where(neg, x / self.alpha if reverse else x * self.alpha, x)
        c = jnp.sum(neg.astype(x.dtype)) * math.log(self.alpha)
        return z, c.astype(x.dtype)


def _check_lmbda(name: str, lmbda: float | None) -> float:
    lmbda = 0.0 if lmbda is None else float(lmbda)
    if not 0.0 <= lmbda < 0.5:
        raise ValueError(f"{name}: lmbda must be in [0, 0.5), got {lmbda}.")
    return lmbda


def _logit_log_det(z, lmbda):
    # log|d logit(lmbda + (1 - 2 lmbda) x) / dx| written in terms of z = that logit:
    # log(1 - 2 lmbda) - log s(z) - log(1 - s(z)) = log(1 - 2 lmbda) + softplus(-z) + softplus(z).
    per = jax.nn.softplus(-z) + jax.nn.softplus(z) + math.log1p(-2 * lmbda)
    return jnp.sum(per)


class Logit(AbstractBijection):
    """NuX's `Logit`: `z = logit(lmbda + (1 - 2 lmbda) x)` for `x` in `(0, 1)`.

    Use a non-zero `lmbda` for images in `[0, 1]` so that the ends stay finite: with
    `lmbda > 0` the whole closed interval `[0, 1]` maps to finite values, with finite
    contribution and gradients. With `lmbda=0` the map is the exact logit, so an input of
    exactly `0` or `1` gives `z = -inf` / `+inf` and an infinite contribution (the true
    value, not an error).

    **Inputs outside `[0, 1]`.** The layer is defined where `lmbda + (1 - 2 lmbda) x`
    lies in `(0, 1)`, i.e. for `-lmbda / (1 - 2 lmbda) < x < (1 - lmbda) / (1 - 2 lmbda)`
    (a little beyond `[0, 1]` when `lmbda > 0`). Beyond that, e.g. `x = 50` or `1e6`
    (data that was not scaled to `[0, 1]`), the logarithm of a negative number makes the
    output and the contribution **NaN, silently** (no check costs a reduction per call
    unless you ask for it). Scale the data into `[0, 1]` first, or run under
    [`nux_eqx.check_finite`][], which turns the NaN (and the `±inf` above) into an error
    that names this layer, `Logit produced NaN or inf from a finite input`, inside `jit`
    and `vmap` too. Reverse (the sigmoid) is finite for every input.

    **Arguments:**

    - `lmbda`: squeezes `[0, 1]` into `[lmbda, 1 - lmbda]` first (default 0.05).
    """

    lmbda: float = eqx.field(static=True)

    def __init__(self, lmbda: float | None = 0.05):
        self.lmbda = _check_lmbda("Logit", lmbda)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        lm = self.lmbda
        if reverse:
            z = x
            out = (jax.nn.sigmoid(z) - lm) / (1 - 2 * lm)
        else:
            y = lm + (1 - 2 * lm) * x
            z = jnp.log(y) - jnp.log1p(-y)
            out = z
        return out, _logit_log_det(z, lm).astype(x.dtype)


class Sigmoid(AbstractBijection):
    """The inverse of `Logit`: `z = (sigmoid(x) - lmbda) / (1 - 2 lmbda)`.

    **Arguments:**

    - `lmbda`: as for `Logit` (default `None`, i.e. 0: a plain sigmoid).
    """

    lmbda: float = eqx.field(static=True)

    def __init__(self, lmbda: float | None = None):
        self.lmbda = _check_lmbda("Sigmoid", lmbda)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        lm = self.lmbda
        if reverse:
            y = lm + (1 - 2 * lm) * x
            pre = jnp.log(y) - jnp.log1p(-y)
            out = pre
        else:
            pre = x
            out = (jax.nn.sigmoid(x) - lm) / (1 - 2 * lm)
        return out, (-_logit_log_det(pre, lm)).astype(x.dtype)
