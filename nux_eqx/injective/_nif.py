"""Noisy injective flows (NIF, arXiv 2006.13070): `TallAffineDiagCov` and
`CouplingTallAffineDiagCov`, and their base class `AbstractNoisyInjective`."""

import abc
import copy
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import positive_int, vector_size
from .._flow import AbstractInjective, ShapeError, check_input
from .._maths import random_orthogonal
from .._types import AnyShape, Cond, Key, Scalar
from ..nn import cast_floating, default_network
from ._gaussian_nif import (
    NIFTerms,
    add_terms,
    bounded_log_cov,
    dense_log_hx,
    dense_pinv,
    dense_sample_posterior,
    tall_half_logdet,
)

_Out = Float[Array, "*out"]


class AbstractNoisyInjective(AbstractInjective):
    """Base class of the noisy injective flows (NIF, arXiv 2006.13070).

    A NIF is a generative model `p(x|z)` from a low-dimensional `z` to `x`, with the
    stochastic inverse `q(z|x) ∝ p(x|z)` (Gaussian, in closed form). Calling it:

    - forward WITH a key samples `z ~ q(z|x)`; the contribution is
      `log p(x|z) - log q(z|x)` (`log h(x) = log ∫ p(x|z) dz` for a single Gaussian NIF),
      so with the prior's `log p(z)` added the forward pass is a single-sample estimate
      of `log p(x)`, a lower bound on average (the ELBO). Read the separate terms with
      [`nux_eqx.AbstractNoisyInjective.nif_terms`][].
    - forward WITHOUT a key is the exact injective map `x -> z` (a pseudo-inverse) with
      contribution `-½ log det(JᵀJ)`, `J` the Jacobian of the noise-free generator
      `z -> x` at `z`: a plain injective flow.
    - reverse maps `z` to the generator's mean (plus `Σ^{1/2} eps` with a key). Without a
      key the contribution is the same `-½ log det(JᵀJ)`; with a key it is the forward
      contribution at the generated pair `(x, z)`, so a reverse pass from a prior sample
      sums to `log p(z) + log p(x|z) - log q(z|x)`, whose mean over the joint is
      `log p(x) + KL(p(z|x) || q(z|x))`, an UPPER estimate (not an exact `log q`).

    **Noise scale `s`** (NuX's `s`): every NIF takes `s=1.0` (a keyword of its
    constructor): reverse with a key adds `s * Σ^{1/2} eps`, so `s < 1` samples closer to
    the generator's mean and `s = 0` switches the noise off (reverse is then the
    deterministic map even with a key, with the injective contribution). The forward
    direction (the model's density) does not depend on `s`. To sample a trained flow with
    other noise, use [`nux_eqx.injective.with_noise_scale`][]`(flow, s)`, which returns a
    copy with every NIF's `s` replaced.

    An [`nux_eqx.AbstractInjective`][]: `check_flow` checks the deterministic mode.
    """

    s: eqx.AbstractVar[float]

    @abc.abstractmethod
    def _sample_posterior(self, x: Array, key: PRNGKeyArray) -> NIFTerms:
        """Sample `z ~ q(z|x)` and return the terms."""

    @abc.abstractmethod
    def _pinv(self, x: Array) -> tuple[Array, Array]:
        """The exact injective map x -> z and `-½ log det(JᵀJ)`."""

    @abc.abstractmethod
    def _generate(self, z: Array, key: PRNGKeyArray | None) -> tuple[Array, Array]:
        """z -> x (with noise when given a key) and the contribution."""

    def _noise(self, key: PRNGKeyArray | None) -> PRNGKeyArray | None:
        """The key for the generator's noise, or `None` when there is none (no key, or
        `s == 0`)."""
        return None if key is None or self.s == 0 else key

    def nif_terms(self, x: Array, key: PRNGKeyArray, *, cond: Cond = None) -> NIFTerms:
        """Sample the stochastic inverse at ONE example and return every likelihood term.

        **Arguments:**

        - `x`: one example (data side).
        - `key`: a PRNG key (the same key gives the same `z` as `self(x, key=key)`).
        - `cond`: ignored (NIFs are unconditional); accepted for symmetry with `__call__`.

        **Returns:**

        A [`nux_eqx.NIFTerms`][] `(z, log_hx, log_pxgz, log_qzgx)`; `log_hx` is the
        layer's forward contribution.
        """
        x = check_input(self, x, False)
        if key is None:
            raise ValueError(
                f"{type(self).__name__}.nif_terms samples q(z|x) and needs a PRNG key; without one "
                "call the layer itself for the deterministic (pseudo-inverse) map."
            )
        return self._sample_posterior(x, key)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[_Out, Scalar]:
        if reverse:
            return self._generate(x, self._noise(key))
        if key is None:
            return self._pinv(x)
        terms = self._sample_posterior(x, key)
        return terms.z, terms.log_hx


def with_noise_scale(flow, s: float):
    """Set the noise scale `s` of every noisy injective layer in `flow` (NuX's `s`).

    Reverse passes (sampling) of a NIF add `s * Σ^{1/2} eps` with a key; `s = 0` switches
    the noise off, so `nux_eqx.sample(with_noise_scale(flow, 0.0), key)` draws from the
    priors and maps them through the generators' means. The forward density does not
    depend on `s`. Pure: returns a new flow, `flow` is unchanged (`s` is static metadata,
    so a flow with another `s` compiles once more).

    **Arguments:**

    - `flow`: any flow (or pytree holding flows).
    - `s`: the noise scale, a finite number `>= 0`.

    **Returns:**

    A copy of `flow` with `s` replaced in every
    [`nux_eqx.AbstractNoisyInjective`][] layer.
    """
    s = check_noise_scale("with_noise_scale", s)

    def replace(leaf):
        if not isinstance(leaf, AbstractNoisyInjective):
            return leaf
        new = copy.copy(leaf)
        object.__setattr__(new, "s", s)
        return new

    return jax.tree.map(replace, flow, is_leaf=lambda v: isinstance(v, AbstractNoisyInjective))


def check_noise_scale(owner: str, s) -> float:
    try:
        s = float(s)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{owner}: s (the noise scale of sampling) must be a number, got {s!r}.") from e
    if not (s >= 0 and np.isfinite(s)):
        raise ValueError(
            f"{owner}: s (the noise scale of sampling) must be a finite number >= 0 (0 switches the "
            f"noise off), got {s}."
        )
    return s


class TallAffineDiagCov(AbstractNoisyInjective):
    """NuX's Gaussian NIF `p(x|z) = N(x | A z + b, diag(exp(log_diag_cov)))`.

    `x` is a vector of size `D` (use `Flatten()` first for images) and `z` of size
    `out_dim <= D`. The stochastic inverse is `q(z|x) = N(z | mu(x), M^{-1})` with
    `M = Aᵀ Σ^{-1} A` and `mu(x) = M^{-1} Aᵀ Σ^{-1} (x - b)`; the forward contribution with a
    key is `log h(x) = log ∫ p(x|z) dz`. Without a key the forward map is the
    Moore-Penrose pseudo-inverse `z = (AᵀA)^{-1} Aᵀ (x - b)` with contribution
    `-½ log det(AᵀA)`; reverse is `A z + b` (plus noise with a key). See
    [`nux_eqx.AbstractNoisyInjective`][] for the conventions and
    [`nux_eqx.importance_weighted`][] for tighter estimates of `log p(x)`.

    `A` starts with orthonormal columns (NuX whitened it), `b` at 0 and `log_diag_cov` at 0.

    **Arguments:**

    - `out_dim`: the size `k` of `z`.
    - `s`: the noise scale of sampling (NuX's `s`; default 1.0; 0 switches the noise off).
    """

    A: Float[Array, "d k"] | None
    b: Float[Array, " d"] | None
    log_diag_cov: Float[Array, " d"] | None
    out_dim: int = eqx.field(static=True)
    s: float = eqx.field(static=True)

    def __init__(self, out_dim: int, *, s: float = 1.0):
        self.s = check_noise_scale("TallAffineDiagCov", s)
        self.out_dim = positive_int("TallAffineDiagCov", "out_dim", out_dim)
        self.A = None
        self.b = None
        self.log_diag_cov = None

    def init(self, x_batch, *, key, cond=None):
        d = vector_size(
            "TallAffineDiagCov", x_batch, out_dim=self.out_dim, hint=" (or use `UpSample` for images)"
        )
        dtype = x_batch.dtype
        A = random_orthogonal(key, d, self.out_dim, dtype)
        # two distinct buffers (a shared one breaks buffer donation in training steps)
        b, log_diag_cov = jnp.zeros((d,), dtype), jnp.zeros((d,), dtype)
        return eqx.tree_at(
            lambda s: (s.A, s.b, s.log_diag_cov), self, (A, b, log_diag_cov), is_leaf=lambda v: v is None
        )

    def _sample_posterior(self, x, key):
        return dense_sample_posterior(x, self.A, self.b, self.log_diag_cov, key)

    def _pinv(self, x):
        return dense_pinv(x, self.A, self.b)

    def _generate(self, z, key):
        x = self.A @ z + self.b
        if key is None:
            return x, dense_pinv(x, self.A, self.b)[1]
        x = x + self.s * jnp.exp(0.5 * self.log_diag_cov) * jr.normal(key, x.shape, x.dtype)
        return x, dense_log_hx(x, self.A, self.b, self.log_diag_cov)


def _order(n: int, kind: str) -> np.ndarray:
    if kind == "every_other":
        return np.concatenate([np.arange(0, n, 2), np.arange(1, n, 2)])
    return np.arange(n)


class GaussianOps(NamedTuple):
    """The closed forms of one kind of linear map `A` (its argument `op`: a matrix, or
    upsampling factors), as `_gaussian_nif` implements them."""

    apply: Callable  # (z, op) -> A z
    sample_posterior: Callable  # (x, op, b, log_diag_cov, key) -> NIFTerms
    pinv: Callable  # (x, op, b) -> (z, -½ log det(AᵀA))
    log_hx: Callable  # (x, op, b, log_diag_cov) -> log h(x)


class AbstractCouplingNIF(AbstractNoisyInjective):
    """NuX's coupling Gaussian NIFs: `x` splits into `x1`, `x2` and `z` into `z1`, `z2`, and

        p(x1, x2 | z1, z2) = N(x1 | A1 z1 + b1(x2), Σ1(x2)) · N(x2 | A2 z2 + b2(z1), Σ2(z1)),

    with `network1` giving `(b1, log_diag_cov1)` from `x2` and `network2` giving
    `(b2, log_diag_cov2)` from (features of) `z1`, each output split in halves along its
    last axis. The stochastic inverse samples `z1 ~ q1(z1 | x)`, then `z2 ~ q2(z2 | x2, z1)`;
    generation runs `x2` first, then `x1`. Without a key the forward map is the exact
    pseudo-inverse and the contribution `-½ log det(JᵀJ)` of the generator's Jacobian.

    A subclass gives the splits, the maps `A_i` (`_op`, `gaussian`) and the features of
    `z1` that `network2` reads.
    """

    network1: eqx.AbstractVar[eqx.Module | None]
    network2: eqx.AbstractVar[eqx.Module | None]
    gaussian: eqx.AbstractClassVar[GaussianOps]

    @abc.abstractmethod
    def _split_x(self, x: Array) -> tuple[Array, Array]:
        """`x -> (x1, x2)`."""

    @abc.abstractmethod
    def _split_z(self, z: Array) -> tuple[Array, Array]:
        """`z -> (z1, z2)`."""

    @abc.abstractmethod
    def _join(self, v1: Array, v2: Array) -> Array:
        """The inverse of both splits."""

    @abc.abstractmethod
    def _op(self, i: int):
        """The argument of `gaussian`'s functions for stage `i` (0 or 1)."""

    @abc.abstractmethod
    def _z1_features(self, z1: Array) -> Array:
        """The input of `network2`."""

    @staticmethod
    def _params(net, v: Array) -> tuple[Array, Array]:
        h = net(v)
        n = h.shape[-1] // 2
        return h[..., :n], bounded_log_cov(h[..., n:])

    def _sample_posterior(self, x, key):
        g = self.gaussian
        k1, k2 = jr.split(key)
        x1, x2 = self._split_x(x)
        b1, lc1 = self._params(self.network1, x2)
        t1 = g.sample_posterior(x1, self._op(0), b1, lc1, k1)
        b2, lc2 = self._params(self.network2, self._z1_features(t1.z))
        t2 = g.sample_posterior(x2, self._op(1), b2, lc2, k2)
        return add_terms(t1, t2, self._join(t1.z, t2.z))

    def _mean_generator(self, z):
        g = self.gaussian
        z1, z2 = self._split_z(z)
        b2, _ = self._params(self.network2, self._z1_features(z1))
        x2 = g.apply(z2, self._op(1)) + b2
        b1, _ = self._params(self.network1, x2)
        return self._join(g.apply(z1, self._op(0)) + b1, x2)

    def _pinv(self, x):
        g = self.gaussian
        x1, x2 = self._split_x(x)
        b1, _ = self._params(self.network1, x2)
        z1, _ = g.pinv(x1, self._op(0), b1)
        b2, _ = self._params(self.network2, self._z1_features(z1))
        z2, _ = g.pinv(x2, self._op(1), b2)
        z = self._join(z1, z2)
        return z, -tall_half_logdet(self._mean_generator, z)

    def _generate(self, z, key):
        if key is None:
            return self._mean_generator(z), -tall_half_logdet(self._mean_generator, z)
        g = self.gaussian
        k1, k2 = jr.split(key)
        z1, z2 = self._split_z(z)
        b2, lc2 = self._params(self.network2, self._z1_features(z1))
        x2 = g.apply(z2, self._op(1)) + b2
        x2 = x2 + self.s * jnp.exp(0.5 * lc2) * jr.normal(k2, x2.shape, x2.dtype)
        b1, lc1 = self._params(self.network1, x2)
        x1 = g.apply(z1, self._op(0)) + b1
        x1 = x1 + self.s * jnp.exp(0.5 * lc1) * jr.normal(k1, x1.shape, x1.dtype)
        c = g.log_hx(x1, self._op(0), b1, lc1) + g.log_hx(x2, self._op(1), b2, lc2)
        return self._join(x1, x2), c


def _dense_apply(z: Array, A: Array) -> Array:
    return A @ z


DENSE = GaussianOps(_dense_apply, dense_sample_posterior, dense_pinv, dense_log_hx)


class CouplingTallAffineDiagCov(AbstractCouplingNIF):
    """NuX's coupling Gaussian NIF, for vectors.

    `x` (size `D`) is split into `x1` (`D // 2` features) and `x2`, `z` (size `out_dim`)
    into `z1` (`out_dim // 2`) and `z2`, and

        p(x1, x2 | z1, z2) = N(x1 | A1 z1 + b1(x2), Σ1(x2)) · N(x2 | A2 z2 + b2(z1), Σ2(z1)),

    where MLPs give `(b1, log_diag_cov1)` from `x2` and `(b2, log_diag_cov2)` from `z1`
    (last layers start at zero: `b = 0`, `Σ = I`). The stochastic inverse samples
    `z1 ~ q1(z1 | x)` (the Gaussian posterior of the first factor), then
    `z2 ~ q2(z2 | x2, z1)`; the forward contribution with a key is
    `log p(x|z) - log q(z|x) = log h1(x) + log h2(x2; z1)`. Generation runs `x2` first
    (from `z`), then `x1` (from `z1` and `x2`).

    Without a key the forward map is the exact pseudo-inverse
    (`z1 = A1⁺(x1 - b1(x2))`, then `z2 = A2⁺(x2 - b2(z1))`) and the contribution is
    `-½ log det(JᵀJ)` of the generator's full Jacobian `J` at `z`, computed with
    `out_dim` forward-mode products (exact; NuX's `-½ Σ log det(AᵢᵀAᵢ)` ignores the
    networks' cross terms).

    **Arguments:**

    - `out_dim`: the size of `z`, at least 2 and at most `D`.
    - `kind`: `"every_other"` (NuX's default: `x1` and `z1` take the even-indexed
      features) or `"split"` (the first halves).
    - `hidden_layer_sizes`: widths of the default `nux_eqx.nn.MLP` conditioners.
    - `network_factory`: optional `factory(in_shape, out_shape, *, key) -> module`; the
      output holds `b` then `log_diag_cov` of the half it models.
    - `s`: the noise scale of sampling (NuX's `s`; default 1.0; 0 switches the noise off).
    """

    A1: Float[Array, "d1 k1"] | None
    A2: Float[Array, "d2 k2"] | None
    network1: eqx.Module | None
    network2: eqx.Module | None
    out_dim: int = eqx.field(static=True)
    s: float = eqx.field(static=True)
    kind: Literal["every_other", "split"] = eqx.field(static=True)
    hidden_layer_sizes: tuple[int, ...] = eqx.field(static=True)
    network_factory: Callable | None = eqx.field(static=True)

    def __init__(
        self,
        out_dim: int,
        kind: Literal["every_other", "split"] = "every_other",
        hidden_layer_sizes: Sequence[int] = (1024, 1024, 1024, 1024),
        network_factory: Callable | None = None,
        *,
        s: float = 1.0,
    ):
        self.s = check_noise_scale("CouplingTallAffineDiagCov", s)
        if int(out_dim) < 2:
            raise ValueError(
                f"CouplingTallAffineDiagCov: out_dim must be >= 2 (z is split in two), got {out_dim}."
            )
        if kind not in ("every_other", "split"):
            raise ValueError(
                f"CouplingTallAffineDiagCov: kind must be 'every_other' or 'split', got {kind!r}."
            )
        self.out_dim = int(out_dim)
        self.kind = kind
        self.hidden_layer_sizes = tuple(int(h) for h in hidden_layer_sizes)
        self.network_factory = network_factory
        self.A1 = self.A2 = self.network1 = self.network2 = None

    def init(self, x_batch, *, key, cond=None):
        k = self.out_dim
        d = vector_size(
            "CouplingTallAffineDiagCov", x_batch, out_dim=k, hint=" (or use `CouplingUpSample` for images)"
        )
        d1, k1 = d // 2, k // 2
        d2, k2 = d - d1, k - k1
        ka1, ka2, kn1, kn2 = jr.split(key, 4)
        dtype = x_batch.dtype
        factory = self.network_factory or (
            lambda i, o, *, key: default_network(i, o, key=key, hidden_layer_sizes=self.hidden_layer_sizes)
        )
        nets = []
        for kn, i, o in ((kn1, d2, d1), (kn2, k1, d2)):
            net = factory((i,), (2 * o,), key=kn)
            out = jax.eval_shape(net, jax.ShapeDtypeStruct((i,), dtype))
            if tuple(out.shape) != (2 * o,):
                raise ShapeError(
                    f"CouplingTallAffineDiagCov: the network maps {(i,)} to {out.shape}, expected {(2 * o,)}."
                )
            nets.append(cast_floating(net, dtype))
        params = (random_orthogonal(ka1, d1, k1, dtype), random_orthogonal(ka2, d2, k2, dtype), *nets)
        return eqx.tree_at(
            lambda s: (s.A1, s.A2, s.network1, s.network2), self, params, is_leaf=lambda v: v is None
        )

    # ---- the coupling ----
    gaussian: ClassVar[GaussianOps] = DENSE

    def _split(self, v: Array, n1: int) -> tuple[Array, Array]:
        v = v[_order(v.shape[0], self.kind)]
        return v[:n1], v[n1:]

    def _split_x(self, x):
        return self._split(x, x.shape[0] // 2)

    def _split_z(self, z):
        return self._split(z, self.out_dim // 2)

    def _join(self, v1: Array, v2: Array) -> Array:
        v = jnp.concatenate([v1, v2])
        return v[np.argsort(_order(v.shape[0], self.kind))]

    def _op(self, i):
        return (self.A1, self.A2)[i]

    def _z1_features(self, z1):
        return z1
