"""More priors: `DiagGaussianPrior`, `AffineGaussianPriorFullCov`, `GMMPrior`,
`UniformDirichletPrior`, `MixtureGaussianPrior`, `LogisticPrior`, `StudentTPrior`.

Every prior passes its input through unchanged (except the low-dimensional
`AffineGaussianPriorFullCov`, which returns the posterior mean of its latent) with the
contribution `log p(x)`, and implements `sample_and_log_prob`, whose `log_q` is the
log-density of the untempered model at the sample.
"""

import math
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int

from .._checks import positive_int, vector_size
from .._flow import AbstractPrior, ShapeError
from .._maths import LOG_2PI, diag_gaussian_log_prob, random_orthogonal
from .._types import AnyShape, Cond, Key, Scalar, Vector
from ..nn._nets import LABEL_KEY

# --------------------------------------------------------------------------------------
# Gaussians.
# --------------------------------------------------------------------------------------


class DiagGaussianPrior(AbstractPrior):
    """A Gaussian prior with a learned mean and log-scale per element:
    `log p(x) = sum_i log N(x_i; mean_i, exp(log_scale_i)^2)`.

    Starts as `N(0, I)` (mean and log-scale zero). [`nux_eqx.sample`][] draws
    `x = mean + exp(log_scale) * temperature * eps`.
    """

    mean: AnyShape | None
    log_scale: AnyShape | None

    def __init__(self):
        self.mean = None
        self.log_scale = None

    def init(self, x_batch, *, key, cond=None):
        shape, dtype = x_batch.shape[1:], x_batch.dtype
        return eqx.tree_at(
            lambda s: (s.mean, s.log_scale),
            self,
            (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)),
            is_leaf=lambda v: v is None,
        )

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        return x, diag_gaussian_log_prob(x, self.mean, self.log_scale)

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        eps = jr.normal(key, self.in_shape, self.mean.dtype)
        z = self.mean + jnp.exp(self.log_scale) * temperature * eps
        return self(z, True, key=None, cond=cond)


class AffineGaussianPriorFullCov(AbstractPrior):
    """NuX's low-dimensional prior with a full noise covariance (broken in NuX, working
    here): `p(x) = ∫ N(z; 0, I) N(x; A z, L Lᵀ) dz = N(x; 0, A Aᵀ + L Lᵀ)`.

    The full-covariance analogue of [`nux_eqx.AffineGaussianPriorDiagCov`][]: `x` is a
    vector of size `D` (put `Flatten()` first for images), `z` has size `out_dim <= D`,
    `A` is `(D, out_dim)` and `L` is a learned lower-triangular Cholesky factor with a
    positive (exponentiated) diagonal, stored as its `D (D + 1) / 2` lower-triangular
    entries. The log marginal is computed with the Woodbury identity after whitening by
    `L` (two triangular solves, `O(D² out_dim)`). Forward returns the posterior mean of
    `z` and the log marginal of `x`; reverse maps `z` to `A z` (plus `L eps` when given a
    key) with the log marginal of the result; [`nux_eqx.sample`][] always adds the noise,
    so its `log_q` is exact. Starts with orthonormal columns of `A` and `L = I`.

    **Arguments:**

    - `out_dim`: the latent size.
    """

    A: Float[Array, "d k"] | None
    cov_tril: Float[Array, " n"] | None
    out_dim: int = eqx.field(static=True)

    def __init__(self, out_dim: int):
        self.out_dim = positive_int("AffineGaussianPriorFullCov", "out_dim", out_dim)
        self.A = self.cov_tril = None

    def init(self, x_batch, *, key, cond=None):
        d = vector_size("AffineGaussianPriorFullCov", x_batch, out_dim=self.out_dim)
        A = random_orthogonal(key, d, self.out_dim, x_batch.dtype)
        cov_tril = jnp.zeros((d * (d + 1) // 2,), x_batch.dtype)
        return eqx.tree_at(lambda s: (s.A, s.cov_tril), self, (A, cov_tril), is_leaf=lambda v: v is None)

    def cholesky(self) -> Float[Array, "d d"]:
        """**Returns:** the noise covariance's Cholesky factor `L` (lower triangular)."""
        d = self.A.shape[0]
        rows, cols = np.tril_indices(d)
        raw = jnp.zeros((d, d), self.cov_tril.dtype).at[rows, cols].set(self.cov_tril)
        diag = jnp.diagonal(raw)
        return raw - jnp.diag(diag) + jnp.diag(jnp.exp(diag))

    def covariance(self) -> Float[Array, "d d"]:
        """**Returns:** the marginal covariance `A Aᵀ + L Lᵀ` of `x`."""
        L = self.cholesky()
        return self.A @ self.A.T + L @ L.T

    def _woodbury(self):
        L = self.cholesky()
        B = jax.scipy.linalg.solve_triangular(L, self.A, lower=True)  # L^-1 A, (d, k)
        M = jnp.eye(self.out_dim, dtype=B.dtype) + B.T @ B
        C = jnp.linalg.cholesky(M)
        return L, B, C

    def _log_marginal(self, x, L, B, C):
        xt = jax.scipy.linalg.solve_triangular(L, x, lower=True)
        y = jax.scipy.linalg.solve_triangular(C, B.T @ xt, lower=True)
        quad = jnp.sum(xt**2) - jnp.sum(y**2)
        logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(L))) + 2 * jnp.sum(jnp.log(jnp.diagonal(C)))
        return -0.5 * (quad + logdet + x.shape[0] * LOG_2PI)

    def transform(
        self, x: Vector, reverse: bool, *, key: Key, cond: Cond
    ) -> tuple[Float[Array, " out"], Scalar]:
        L, B, C = self._woodbury()
        if reverse:
            out = self.A @ x
            if key is not None:
                out = out + L @ jr.normal(key, out.shape, out.dtype)
            return out, self._log_marginal(out, L, B, C)
        xt = jax.scipy.linalg.solve_triangular(L, x, lower=True)
        mean = jax.scipy.linalg.cho_solve((C, True), B.T @ xt)
        return mean, self._log_marginal(x, L, B, C)

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        k1, k2 = jr.split(key)
        d, dtype = self.A.shape[0], self.A.dtype
        L, B, C = self._woodbury()
        z = jr.normal(k1, (self.out_dim,), dtype)
        x = temperature * (self.A @ z + L @ jr.normal(k2, (d,), dtype))
        return x, self._log_marginal(x, L, B, C)


# --------------------------------------------------------------------------------------
# Mixtures.
# --------------------------------------------------------------------------------------


def _label_entry(owner: str, cond, label_key: str | None):
    """The part of `cond` that holds the label: `cond[label_key]` for a dict `cond`, the
    whole `cond` otherwise; `None` for no label (or `label_key=None`)."""
    if label_key is None or cond is None:
        return None
    if isinstance(cond, Mapping):
        if label_key not in cond:
            raise TypeError(
                f"{owner} reads its class label from the entry {label_key!r} of a dict `cond`, but "
                f"this cond has the entries {sorted(map(str, cond))}. Put the label (an integer scalar "
                f"array per example, -1 for unlabelled) under {label_key!r}, name the entry with "
                "`label_key=`, or pass `label_key=None` for a prior that reads no labels."
            )
        return cond[label_key]
    return cond


def _label_of(owner: str, cond, n_classes: int, label_key: str | None = LABEL_KEY) -> Array | None:
    """Validate a GMMPrior label: `None`, or an integer scalar array in `-1 .. K-1`."""
    cond = _label_entry(owner, cond, label_key)
    if cond is None:
        return None
    if not isinstance(cond, (jax.Array, np.ndarray, np.integer, int)) or isinstance(cond, bool):
        raise TypeError(
            f"{owner} takes the class label as `cond`: an integer scalar array (-1 for "
            f"unlabelled), or None; next to the conditioning of other layers, as the entry "
            f"{label_key!r} of a dict `cond`; got a {type(cond).__name__}."
        )
    y = jnp.asarray(cond)
    if y.shape != ():
        raise ShapeError(
            f"{owner}: the label `cond` must be an integer scalar (one example), got shape {y.shape}; "
            "batch labels with jax.vmap alongside x."
        )
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"{owner}: the label `cond` must have an integer dtype, got {y.dtype}.")
    return eqx.error_if(
        y,
        (y < -1) | (y >= n_classes),
        f"{owner}: label out of range; expected -1 (unlabelled) or a class in 0..{n_classes - 1}.",
    )


class GMMPrior(AbstractPrior):
    """NuX's classification prior: a Gaussian mixture with one diagonal component per class
    and a uniform class prior `p(y) = 1 / K`.

    The class label comes in `cond`, an integer scalar array (one per example; batch it
    with `jax.vmap` alongside `x`). In a flow whose other layers are conditional too, pass
    a dict `cond={"label": y, "c": c}`: this prior reads `cond["label"]` (another entry
    with `label_key=`), and the conditional layers read the rest, as
    [`nux_eqx.nn.cond_features`][] leaves the `"label"` entry out. The label:

    - a label `y` in `0 .. K-1`: the contribution is the joint
      `log p(x, y) = log N(x; mean_y, diag(exp(2 log_scale_y))) - log K`
      (NuX added `log K`; the sign is fixed here);
    - `cond=None` or the label `-1`: the marginal
      `log p(x) = logsumexp_k log N(x; mean_k, ...) - log K`.

    Summing the contributions over a batch that mixes labelled and unlabelled examples
    gives the semi-supervised log-likelihood. A label of the wrong shape or dtype raises at
    trace time; a label outside `-1 .. K-1` raises through `eqx.error_if`. Use
    [`nux_eqx.GMMPrior.predict`][] on the prior's input (the flow's latent) to classify.
    Means start as `N(0, I)` draws, log-scales at zero; both are trained.

    **Arguments:**

    - `n_classes`: the number of classes `K`.
    - `label_key`: where the label is when `cond` is a dict: the entry of that name
      (default `"label"`; a dict without it is refused). A `cond` that is not a dict is
      the label itself. `None`: the prior reads no label (always the marginal), so the
      whole `cond` is free for the conditional layers.
    """

    means: Float[Array, " k *shape"] | None
    log_scales: Float[Array, " k *shape"] | None
    n_classes: int = eqx.field(static=True)
    label_key: str | None = eqx.field(static=True)

    def __init__(self, n_classes: int, *, label_key: str | None = LABEL_KEY):
        if label_key is not None and not isinstance(label_key, str):
            raise TypeError(f"GMMPrior: label_key must be a string or None, got {label_key!r}.")
        self.n_classes = positive_int("GMMPrior", "n_classes", n_classes)
        self.label_key = label_key
        self.means = self.log_scales = None

    def init(self, x_batch, *, key, cond=None):
        shape, dtype = x_batch.shape[1:], x_batch.dtype
        labels = _label_entry("GMMPrior", cond, self.label_key)
        if labels is not None:
            if not isinstance(labels, (jax.Array, np.ndarray)):
                raise TypeError(
                    f"GMMPrior: the batched labels must be an integer array (one label per example, -1 "
                    f"for unlabelled); with other conditioning, as the entry {self.label_key!r} of a dict "
                    f"`cond`; got a {type(labels).__name__}."
                )
            y = jnp.asarray(labels)
            if y.shape != x_batch.shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
                raise ShapeError(
                    f"GMMPrior: the batched labels `cond` must be an integer array of shape "
                    f"{x_batch.shape[:1]} (one label per example, -1 for unlabelled), got "
                    f"{y.dtype} {y.shape}."
                )
        means = jr.normal(key, (self.n_classes, *shape), dtype)
        log_scales = jnp.zeros((self.n_classes, *shape), dtype)
        return eqx.tree_at(
            lambda s: (s.means, s.log_scales), self, (means, log_scales), is_leaf=lambda v: v is None
        )

    def _component_log_probs(self, x):
        return diag_gaussian_log_prob(x, self.means, self.log_scales)  # (K,)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        y = _label_of("GMMPrior", cond, self.n_classes, self.label_key)
        comp = self._component_log_probs(x)
        log_k = math.log(self.n_classes)
        marginal = jax.nn.logsumexp(comp) - log_k
        if y is None:
            return x, marginal
        labelled = comp[jnp.clip(y, 0, self.n_classes - 1)] - log_k
        return x, jnp.where(y >= 0, labelled, marginal)

    def predict(self, x: AnyShape) -> tuple[Float[Array, " k"], Int[Array, ""]]:
        """Classify one example at the prior's input (the latent of the flow before it).

        **Arguments:**

        - `x`: one example of the prior's input shape. To classify data, run the layers
          before the prior first (or read the prior's input with [`nux_eqx.capture`][]).

        **Returns:**

        `(posterior, label)`: the class posterior `p(y | x)` (shape `(K,)`, summing to 1)
        and its argmax.
        """
        x = jnp.asarray(x)
        if self.in_shape is None:
            raise ValueError("GMMPrior.predict: call nux_eqx.init first.")
        if tuple(x.shape) != self.in_shape:
            raise ShapeError(
                f"GMMPrior.predict expected one example of shape {self.in_shape}, got {x.shape}; "
                "batch with jax.vmap."
            )
        post = jax.nn.softmax(self._component_log_probs(x))
        return post, jnp.argmax(post)

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        y = _label_of("GMMPrior", cond, self.n_classes, self.label_key)
        k1, k2 = jr.split(key)
        comp = jr.randint(k1, (), 0, self.n_classes)
        if y is not None:
            comp = jnp.where(y >= 0, y, comp)
        eps = jr.normal(k2, self.in_shape, self.means.dtype)
        z = self.means[comp] + jnp.exp(self.log_scales[comp]) * temperature * eps
        return self(z, True, key=None, cond=cond)


class MixtureGaussianPrior(AbstractPrior):
    """A learned mixture of `K` diagonal Gaussians over the whole example:
    `log p(x) = logsumexp_k [log w_k + log N(x; mean_k, diag(exp(2 log_scale_k)))]` with
    `w = softmax(logits)`.

    Starts with equal weights, means drawn from `N(0, I)` and unit scales. Sampling picks a
    component from `w`, then draws `mean_k + exp(log_scale_k) * temperature * eps`.

    **Arguments:**

    - `K`: the number of components.
    """

    logits: Float[Array, " k"] | None
    means: Float[Array, " k *shape"] | None
    log_scales: Float[Array, " k *shape"] | None
    K: int = eqx.field(static=True)

    def __init__(self, K: int = 4):
        self.K = positive_int("MixtureGaussianPrior", "K", K)
        self.logits = None
        self.means = None
        self.log_scales = None

    def init(self, x_batch, *, key, cond=None):
        shape, dtype = x_batch.shape[1:], x_batch.dtype
        vals = (
            jnp.zeros((self.K,), dtype),
            jr.normal(key, (self.K, *shape), dtype),
            jnp.zeros((self.K, *shape), dtype),
        )
        return eqx.tree_at(
            lambda s: (s.logits, s.means, s.log_scales), self, vals, is_leaf=lambda v: v is None
        )

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        comp = diag_gaussian_log_prob(x, self.means, self.log_scales)
        return x, jax.nn.logsumexp(jax.nn.log_softmax(self.logits) + comp)

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        k1, k2 = jr.split(key)
        comp = jr.categorical(k1, self.logits)
        eps = jr.normal(k2, self.in_shape, self.means.dtype)
        z = self.means[comp] + jnp.exp(self.log_scales[comp]) * temperature * eps
        return self(z, True, key=None, cond=cond)


# --------------------------------------------------------------------------------------
# Other fixed base distributions.
# --------------------------------------------------------------------------------------


class UniformDirichletPrior(AbstractPrior):
    """A (symmetric) Dirichlet prior on the probability simplex, uniform by default.

    **The input** is a vector of size `K - 1`: the first `K - 1` coordinates of a point of
    the open `K`-simplex, so `x_i > 0` and `sum(x) < 1`; the last coordinate is implicit,
    `x_K = 1 - sum(x)`. This makes the density one with respect to Lebesgue measure on
    `R^(K-1)`, so it integrates to 1 like every other prior; put it after a layer whose
    output lies in that set (e.g. the first `K - 1` outputs of a softmax / stick-breaking
    bijection). With `alpha = alpha_scale * ones(K)`:

    `log p(x) = log Γ(K alpha) - K log Γ(alpha) + (alpha - 1) sum_{i=1..K} log x_i`

    (`log (K-1)!` for the uniform `alpha_scale = 1`) inside the simplex and `-inf`
    outside. `temperature` samples the tempered density `p^(1/T²)` (a Dirichlet with
    concentration `1 + (alpha - 1) / T²`), as Gaussian priors do; it has no effect on the
    uniform one.

    **Unlike NuX, it takes `K - 1` coordinates, not `K`.** NuX's `UniformDirichletPrior`
    read the whole `K`-vector of probabilities; a `K`-vector here would put every point on
    the boundary (`x_K = 0`), where the density is `-inf`. So it is refused: at `init`
    when the prior is told `K` (`UniformDirichletPrior(K=...)`) and the input has `K`
    entries, and, without `K`, when every example of the (concrete) init batch sums to 1,
    which `K - 1` coordinates of an interior point never do. Drop the last coordinate
    (`p[..., :-1]`), or put [`nux_eqx.SoftmaxPP`][] before it, which outputs `K - 1`.

    It reads no label (NuX's label bonus `log x[y]`, unnormalised, is not reproduced), so
    it ignores `cond`, a dict with a `"label"` entry included.

    **Arguments:**

    - `alpha_scale`: the symmetric concentration (default 1: uniform); no parameters are
      learned.
    - `K`: the number of categories, optional: the input must then have `K - 1` entries.
    """

    eager_init = True  # init checks whether the concrete batch lies on the simplex

    alpha_scale: float = eqx.field(static=True)
    K: int | None = eqx.field(static=True)

    def __init__(self, alpha_scale: float = 1.0, *, K: int | None = None):
        alpha_scale = float(alpha_scale)
        if not (alpha_scale > 0 and math.isfinite(alpha_scale)):
            raise ValueError(f"UniformDirichletPrior: alpha_scale must be > 0, got {alpha_scale}.")
        if K is not None and (isinstance(K, bool) or int(K) != K or int(K) < 2):
            raise ValueError(
                f"UniformDirichletPrior: K (the number of categories) must be an integer >= 2, got {K}."
            )
        self.alpha_scale = alpha_scale
        self.K = None if K is None else int(K)

    def init(self, x_batch, *, key, cond=None):
        shape = x_batch.shape[1:]
        if len(shape) != 1:
            raise ShapeError(
                f"UniformDirichletPrior takes vectors of size K - 1 (the first K - 1 coordinates of "
                f"a point of the K-simplex), got examples of shape {shape}; use `Flatten()` first."
            )
        nux_hint = (
            "nux_eqx's UniformDirichletPrior takes the first K - 1 coordinates of a point of the "
            "K-simplex (NuX's took all K): drop the last one (`p[..., :-1]`), or put `SoftmaxPP()` "
            "before the prior, which outputs K - 1."
        )
        if self.K is not None and shape[0] != self.K - 1:
            what = "the full K-vector" if shape[0] == self.K else "not K - 1"
            raise ShapeError(
                f"UniformDirichletPrior(K={self.K}) takes vectors of size {self.K - 1}, got size "
                f"{shape[0]} ({what}). {nux_hint}"
            )
        if not isinstance(x_batch, jax.core.Tracer) and x_batch.shape[0] > 0:
            xb = np.asarray(x_batch, np.float64)
            if np.all(xb >= 0) and np.all(np.abs(xb.sum(-1) - 1.0) <= 1e-4):
                raise ShapeError(
                    f"UniformDirichletPrior: every example of the init batch sums to 1, so these look "
                    f"like full K-vectors of probabilities (K = {shape[0]}), on which the density is "
                    f"-inf. {nux_hint}"
                )
        return self

    def transform(self, x: Vector, reverse: bool, *, key: Key, cond: Cond) -> tuple[Vector, Scalar]:
        a, k = self.alpha_scale, x.shape[0] + 1
        full = jnp.concatenate([x, (1 - jnp.sum(x))[None]])
        inside = jnp.all(full > 0)
        log_norm = math.lgamma(k * a) - k * math.lgamma(a)
        if a == 1.0:
            logp = jnp.asarray(log_norm, x.dtype)
        else:
            logp = log_norm + (a - 1) * jnp.sum(jnp.log(jnp.where(inside, full, 1.0)))
        return x, jnp.where(inside, logp, -jnp.inf).astype(x.dtype)

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        k = self.in_shape[0] + 1
        a = self.alpha_scale
        conc = jnp.full((k,), a) if a == 1.0 else 1.0 + (a - 1.0) / jnp.square(temperature) * jnp.ones((k,))
        p = jr.dirichlet(key, conc)
        return self(p[:-1], True, key=None, cond=cond)


class LogisticPrior(AbstractPrior):
    """The standard logistic prior, independent per element:
    `log p(x) = sum_i -x_i - 2 log(1 + exp(-x_i))`.

    Sampling draws `temperature * logistic noise`. Heavier tails than `N(0, I)`; after a
    `Sigmoid`, it is the uniform distribution on `(0, 1)`.
    """

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        return x, jnp.sum(-x - 2 * jax.nn.softplus(-x))

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        z = temperature * jr.logistic(key, self.in_shape)
        return self(z, True, key=None, cond=cond)


class StudentTPrior(AbstractPrior):
    """The standard Student-t prior with `df` degrees of freedom, independent per element:
    `log p(x) = sum_i log Γ((ν+1)/2) - log Γ(ν/2) - ½ log(νπ) - (ν+1)/2 log(1 + x_i²/ν)`.

    Sampling draws `temperature * t_ν` noise.

    **Arguments:**

    - `df`: the degrees of freedom `ν > 0` (fixed).
    """

    df: float = eqx.field(static=True)

    def __init__(self, df: float = 5.0):
        df = float(df)
        if not (df > 0 and math.isfinite(df)):
            raise ValueError(f"StudentTPrior: df must be a positive finite number, got {df}.")
        self.df = df

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        v = self.df
        const = math.lgamma((v + 1) / 2) - math.lgamma(v / 2) - 0.5 * math.log(v * math.pi)
        return x, x.size * const - 0.5 * (v + 1) * jnp.sum(jnp.log1p(x**2 / v))

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        z = temperature * jr.t(key, self.df, self.in_shape)
        return self(z, True, key=None, cond=cond)


__all__ = [
    "AffineGaussianPriorFullCov",
    "DiagGaussianPrior",
    "GMMPrior",
    "LogisticPrior",
    "MixtureGaussianPrior",
    "StudentTPrior",
    "UniformDirichletPrior",
]
