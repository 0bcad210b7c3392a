"""Gaussian priors: `UnitGaussianPrior`, `ConditionalGaussianPrior`, `AffineGaussianPriorDiagCov`."""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

from .._checks import positive_int, vector_size
from .._flow import AbstractPrior, ShapeError
from .._maths import LOG_2PI, random_orthogonal, std_normal_log_prob
from .._types import AnyShape, Cond, Key, Scalar, Vector
from ..nn import cast_floating, cond_features, default_network


class UnitGaussianPrior(AbstractPrior):
    """The standard normal prior `N(0, I)` (NuX's `UnitGaussianPrior`).

    Forward and reverse pass `z` through unchanged with contribution `log N(z; 0, I)`.
    [`nux_eqx.sample`][] draws `z = temperature * eps`.
    """

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        return x, std_normal_log_prob(x)

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        z = temperature * jr.normal(key, self.in_shape)
        return self(z, True, key=None, cond=cond)


class ConditionalGaussianPrior(AbstractPrior):
    """A diagonal Gaussian whose mean and log-scale come from a network of `cond`.

    Glow's prior on the factored-out half: inside `ChainRule` it reads
    `ChainRuleCond.x_a` (and the outer `cond`, if any; see `nux_eqx.nn.cond_features`).
    The network's last layer starts at zero, so the prior starts as `N(0, I)`.

    **Arguments:**

    - `hidden_layer_sizes`: widths of the MLP for vector examples.
    - `n_channels`: hidden width of the ConvNet for image examples.
    - `network_factory`: optional `factory(in_shape, out_shape, *, key)`; the output has
      twice the example's last axis (mean, then log-scale).
    """

    network: eqx.Module | None
    hidden_layer_sizes: tuple[int, ...] = eqx.field(static=True)
    n_channels: int = eqx.field(static=True)
    network_factory: Callable | None = eqx.field(static=True)
    feature_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)
    """The shape of one example's conditioning features, recorded by `init`."""
    needs_cond: ClassVar[bool] = True

    def __init__(
        self, hidden_layer_sizes=(64, 64), n_channels: int = 64, network_factory: Callable | None = None
    ):
        self.hidden_layer_sizes = tuple(int(h) for h in hidden_layer_sizes)
        self.n_channels = int(n_channels)
        self.network_factory = network_factory
        self.network = None
        self.feature_shape = None

    def init(self, x_batch, *, key, cond=None):
        shape = tuple(x_batch.shape[1:])
        if not jax.tree.leaves(cond):
            raise ValueError(
                "ConditionalGaussianPrior needs a conditioning: use it as the second flow of a "
                "ChainRule, or pass `cond=` to nux_eqx.init."
            )
        feats = jax.vmap(lambda c: cond_features(c, shape))(cond)
        in_shape = tuple(feats.shape[1:])
        out_shape = (*shape[:-1], 2 * shape[-1])
        factory = self.network_factory or (
            lambda i, o, *, key: default_network(
                i, o, key=key, hidden_layer_sizes=self.hidden_layer_sizes, n_channels=self.n_channels
            )
        )
        net = cast_floating(factory(in_shape, out_shape, key=key), x_batch.dtype)
        new = eqx.tree_at(lambda s: s.network, self, net, is_leaf=lambda v: v is None)
        # `feature_shape` is static metadata: set it on the copy `tree_at` returned.
        object.__setattr__(new, "feature_shape", in_shape)
        return new

    def _params(self, shape, cond):
        feats = cond_features(cond, shape)
        if self.feature_shape is not None and tuple(feats.shape) != self.feature_shape:
            leaves = tuple(tuple(jnp.shape(leaf)) for leaf in jax.tree.leaves(cond))
            raise ShapeError(
                f"ConditionalGaussianPrior was initialised with conditioning features of shape "
                f"{self.feature_shape} per example, but this cond (leaves of shapes {leaves}) gives "
                f"{tuple(feats.shape)}; pass the conditioning of ONE example per call, with the "
                "structure used at init (batch it with jax.vmap alongside x)."
            )
        h = self.network(feats.astype(self.network_dtype()))
        c = shape[-1]
        return h[..., :c], h[..., c:]

    def network_dtype(self):
        return jax.tree.leaves(self.network)[0].dtype

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        mean, log_scale = self._params(x.shape, cond)
        eps = (x - mean) * jnp.exp(-log_scale)
        return x, std_normal_log_prob(eps) - jnp.sum(log_scale)

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        if cond is None:
            raise ValueError("ConditionalGaussianPrior needs `cond` to sample.")
        mean, log_scale = self._params(self.in_shape, cond)
        z = mean + jnp.exp(log_scale) * temperature * jr.normal(key, self.in_shape, mean.dtype)
        return self(z, True, key=None, cond=cond)


class AffineGaussianPriorDiagCov(AbstractPrior):
    """NuX's low-dimensional prior: `p(x) = ∫ N(z; 0, I) N(x; A z, diag(exp(log_diag_cov))) dz`.

    `x` is a vector of size `D` and `z` of size `out_dim <= D` (use `Flatten()` first
    for images). The marginal is `N(x; 0, A A^T + Σ)`, computed with the Woodbury
    identity in `O(D k^2)`. Forward returns the posterior mean of `z` and the log
    marginal of `x`; reverse maps `z` to `A z` (plus `Σ^{1/2} eps` when given a key) with
    the log marginal of the result; [`nux_eqx.sample`][] always adds the noise, so its
    `log_q` is exact.

    **Arguments:**

    - `out_dim`: the latent size `k`.
    """

    A: Float[Array, "d k"] | None
    log_diag_cov: Float[Array, " d"] | None
    out_dim: int = eqx.field(static=True)

    def __init__(self, out_dim: int):
        self.out_dim = positive_int("AffineGaussianPriorDiagCov", "out_dim", out_dim)
        self.A = self.log_diag_cov = None

    def init(self, x_batch, *, key, cond=None):
        d = vector_size("AffineGaussianPriorDiagCov", x_batch, out_dim=self.out_dim)
        # Orthonormal columns (NuX whitened A), scaled to the data's spread.
        A = random_orthogonal(key, d, self.out_dim, x_batch.dtype)
        log_diag_cov = jnp.zeros((d,), x_batch.dtype)
        return eqx.tree_at(
            lambda s: (s.A, s.log_diag_cov), self, (A, log_diag_cov), is_leaf=lambda v: v is None
        )

    def _woodbury(self):
        inv_var = jnp.exp(-self.log_diag_cov)
        AtSi = self.A.T * inv_var  # (k, d)
        M = jnp.eye(self.out_dim, dtype=self.A.dtype) + AtSi @ self.A
        L = jnp.linalg.cholesky(M)
        return inv_var, AtSi, L

    def _log_marginal(self, x, inv_var, AtSi, L):
        b = AtSi @ x
        y = jax.scipy.linalg.solve_triangular(L, b, lower=True)
        quad = jnp.sum(x**2 * inv_var) - jnp.sum(y**2)
        logdet = 2 * jnp.sum(jnp.log(jnp.diag(L))) + jnp.sum(self.log_diag_cov)
        return -0.5 * (quad + logdet + x.shape[0] * LOG_2PI)

    def transform(
        self, x: Vector, reverse: bool, *, key: Key, cond: Cond
    ) -> tuple[Float[Array, " out"], Scalar]:
        inv_var, AtSi, L = self._woodbury()
        if reverse:
            out = self.A @ x
            if key is not None:
                out = out + jnp.exp(0.5 * self.log_diag_cov) * jr.normal(key, out.shape, out.dtype)
            return out, self._log_marginal(out, inv_var, AtSi, L)
        mean = jax.scipy.linalg.cho_solve((L, True), AtSi @ x)
        return mean, self._log_marginal(x, inv_var, AtSi, L)

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        k1, k2 = jr.split(key)
        z = temperature * jr.normal(k1, (self.out_dim,), self.A.dtype)
        noise = (
            temperature * jnp.exp(0.5 * self.log_diag_cov) * jr.normal(k2, (self.A.shape[0],), self.A.dtype)
        )
        x = self.A @ z + noise
        inv_var, AtSi, L = self._woodbury()
        return x, self._log_marginal(x, inv_var, AtSi, L)
