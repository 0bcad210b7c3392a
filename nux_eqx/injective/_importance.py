"""`ImportanceWeighted` (NuX's `importance_weighted`): importance-weighted estimates of
`log p(x)` for a noisy injective flow followed by a prior."""

import math
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray, PyTree, Shaped

from .._context import capturing, child_scope
from .._flow import AbstractContainer, AbstractFlow, ShapeError, check_input, push, sample_from, with_shapes
from .._maths import split_key
from ._nif import AbstractNoisyInjective


class IWEstimates(NamedTuple):
    """What [`nux_eqx.ImportanceWeighted.estimates`][] returns for one example.

    With `n` samples `z_i ~ q(z|x)` of the NIF's stochastic inverse and the log weights
    `log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x)` (the NIF's contribution plus the
    prior flow's), and `w̃ = softmax(log w)` (self-normalised weights, no gradient):

    **Fields:**

    - `z`: the prior flow's outputs averaged over the samples (NuX's choice).
    - `log_px_est`: `logsumexp(log w) - log n`, the importance-weighted (IWAE) estimate of
      `log p(x)`. A lower bound on average for every `n`, increasing with `n` and
      converging to `log p(x)`. This is the layer's forward contribution.
    - `log_px_lower`: `mean(log w)`, the single-sample estimate averaged over the samples;
      on average the evidence lower bound `log p(x) - KL(q(z|x) || p(z|x))`.
    - `log_px_upper_est`: `Σ w̃ log w`, an estimate of `E_{p(z|x)}[log w] =
      log p(x) + KL(p(z|x) || q(z|x))` (an upper value; self-normalised, so biased for
      small `n`).
    - `js_div`: `(log_px_upper_est - log_px_lower) / 2`, NuX's name; it estimates half
      the symmetrised KL divergence between `q(z|x)` and the true posterior `p(z|x)` (a
      Jeffreys divergence, not Jensen-Shannon), zero when the two agree.
    - `objective`: NuX's training objective `Σ w̃ (log p(x|z_i) + log p(z_i))`, an
      estimate of `E_{p(z|x)}[log p(x, z)] = log p(x) - H[p(z|x)]`. NaN unless the `nif`
      is a single NIF layer (it needs `log q(z|x)`, see
      [`nux_eqx.AbstractNoisyInjective.nif_terms`][]).
    - `conditional_entropy`: `log_px_est - objective`, an estimate of the differential
      entropy `H[p(z|x)]` of the true posterior (NaN as `objective`).
    - `log_w`: the `n` log weights.
    """

    z: Array
    log_px_est: Array
    log_px_lower: Array
    log_px_upper_est: Array
    js_div: Array
    objective: Array
    conditional_entropy: Array
    log_w: Array


class ImportanceWeighted(AbstractContainer):
    """Importance-weighted `log p(x)` for a noisy injective flow and its prior (NuX's
    `importance_weighted`).

    `log p(x) = log ∫ p(x|z) p(z) dz` is estimated with `n_samples` draws
    `z_i ~ q(z|x)` of the NIF's stochastic inverse:
    `log p(x) ≈ logsumexp_i(log w_i) - log n`, with `log w_i` the NIF's forward
    contribution (`log p(x|z_i) - log q(z_i|x)`) plus the prior flow's (`log p(z_i)`).
    With `n = 1` this is the usual single-sample estimate (the ELBO on average); the
    estimate is a lower bound on average for every `n` and tightens to `log p(x)` as `n`
    grows (IWAE, Burda et al. 2015).

    - Forward (needs a key): returns the prior flow's output averaged over the samples and
      the contribution `log_px_est`. The contribution is differentiable (the samples are
      reparametrised), so `-mean(log_prob)` over a batch is a training objective: the IWAE
      bound, which trains the NIF and the prior together.
    - [`nux_eqx.ImportanceWeighted.estimates`][] returns every estimate NuX reported
      (upper estimate, divergence, NuX's objective, conditional entropy), with an optional
      number of samples different from the one used in training.
    - Reverse runs the prior flow in reverse, then the NIF (with noise when given a key);
      the contribution is their sum. [`nux_eqx.sample`][] samples the prior.

    `nux_eqx.init` initialises the NIF on the batch, then the prior on the NIF's samples.
    If both are already initialised the wrapper is ready to use, so a trained NIF and
    prior can be wrapped for evaluation with many samples.

    **Arguments:**

    - `nif`: the noisy injective flow (usually one NIF layer such as
      `TallAffineDiagCov(16)`; any flow whose forward contribution with a key is a log
      importance weight works, without `objective` / `conditional_entropy`).
    - `prior`: the flow on the latent side, ending in a prior, e.g.
      `Sequential(Coupling(), Reverse(), UnitGaussianPrior())`.
    - `n_samples`: the number of importance samples (NuX's `n_importance_samples`,
      accepted as a keyword alias). Default 64.
    """

    nif: AbstractFlow
    prior: AbstractFlow
    n_samples: int = eqx.field(static=True)
    forward_needs_key: ClassVar[bool] = True

    def __init__(
        self,
        nif: AbstractFlow,
        prior: AbstractFlow,
        n_samples: int = 64,
        *,
        n_importance_samples: int | None = None,
    ):
        for name, f in (("nif", nif), ("prior", prior)):
            if not isinstance(f, AbstractFlow):
                raise TypeError(
                    f"ImportanceWeighted: `{name}` must be a flow (an AbstractFlow), got {type(f).__name__}."
                )
        if n_importance_samples is not None:
            n_samples = n_importance_samples
        if int(n_samples) < 1:
            raise ValueError(f"ImportanceWeighted: n_samples must be >= 1, got {n_samples}.")
        self.nif = nif
        self.prior = prior
        self.n_samples = int(n_samples)
        if nif.is_initialised and prior.is_initialised:
            if nif.out_shape != prior.in_shape:
                raise ShapeError(
                    f"ImportanceWeighted: the NIF outputs {nif.out_shape} but the prior takes "
                    f"{prior.in_shape}."
                )
            self._in_shape = nif.in_shape
            self._out_shape = prior.out_shape

    def children(self):
        return (("nif", self.nif), ("prior", self.prior))

    def init_and_push(self, x_batch, *, key, cond=None):
        k_nif, k_prior, k_push = jr.split(key, 3)
        nif, z = self.nif.init_and_push(x_batch, key=k_nif, cond=cond)
        prior, _ = self.prior.init_and_push(z, key=k_prior, cond=cond)
        new = eqx.tree_at(lambda s: (s.nif, s.prior), self, (nif, prior))
        new = with_shapes(new, x_batch.shape[1:], prior.out_shape)
        return new, push(new, x_batch, key=k_push, cond=cond)

    # ---- the samples ----
    def _draws(self, x, key, cond, n: int, with_terms: bool):
        use_terms = with_terms and isinstance(self.nif, AbstractNoisyInjective)

        def one(k):
            k_nif, k_prior = jr.split(k)
            with child_scope("nif"):
                if use_terms:
                    t = self.nif.nif_terms(x, k_nif, cond=cond)
                    z, c_nif, log_pxgz = t.z, t.log_hx, t.log_pxgz
                else:
                    z, c_nif = self.nif(x, key=k_nif, cond=cond)
                    log_pxgz = jnp.full((), jnp.nan, c_nif.dtype)
            with child_scope("prior"):
                u, c_prior = self.prior(z, key=k_prior, cond=cond)
            return u, c_nif, c_prior, log_pxgz

        keys = jr.split(key, n)
        if capturing():  # record every sample's leaf calls outside a vmap
            outs = [one(k) for k in keys]
            return tuple(jnp.stack(a) for a in zip(*outs))
        return jax.vmap(one)(keys)

    def _estimates(self, x, key, cond, n, with_terms) -> IWEstimates:
        u, c_nif, c_prior, log_pxgz = self._draws(x, key, cond, n, with_terms)
        log_w = c_nif + c_prior
        log_px_est = jax.nn.logsumexp(log_w) - math.log(n)
        lower = jnp.mean(log_w)
        w = jax.lax.stop_gradient(jax.nn.softmax(log_w))
        upper = jnp.sum(w * log_w)
        objective = jnp.sum(w * (log_pxgz + c_prior))
        return IWEstimates(
            z=jnp.mean(u, axis=0),
            log_px_est=log_px_est,
            log_px_lower=lower,
            log_px_upper_est=upper,
            js_div=0.5 * (upper - lower),
            objective=objective,
            conditional_entropy=log_px_est - objective,
            log_w=log_w,
        )

    def estimates(
        self, x: Array, key: PRNGKeyArray, *, cond: PyTree = None, n_samples: int | None = None
    ) -> IWEstimates:
        """All of NuX's importance-weighted estimates for ONE example.

        **Arguments:**

        - `x`: one example.
        - `key`: a PRNG key (needed: the samples are random).
        - `cond`: conditioning passed to the NIF and the prior.
        - `n_samples`: the number of importance samples (default: the layer's).

        **Returns:**

        An [`nux_eqx.IWEstimates`][]; batch with `jax.vmap`.
        """
        x = check_input(self, x, False)
        if key is None:
            raise ValueError(
                "ImportanceWeighted.estimates needs a PRNG key: the importance samples are random."
            )
        n = self.n_samples if n_samples is None else int(n_samples)
        if n < 1:
            raise ValueError(f"ImportanceWeighted.estimates: n_samples must be >= 1, got {n}.")
        return self._estimates(x, key, cond, n, with_terms=True)

    def transform(
        self, x: Shaped[Array, "..."], reverse: bool, *, key: PRNGKeyArray | None, cond: PyTree
    ) -> tuple[Shaped[Array, "..."], Shaped[Array, ""]]:
        if reverse:
            k_prior, k_nif = split_key(key, 2)
            with child_scope("prior"):
                z, c_prior = self.prior(x, True, key=k_prior, cond=cond)
            with child_scope("nif"):
                out, c_nif = self.nif(z, True, key=k_nif, cond=cond)
            return out, c_prior + c_nif
        est = self._estimates(x, key, cond, self.n_samples, with_terms=False)
        return est.z, est.log_px_est

    def children_can_sample(self) -> bool:
        return self.prior.can_sample()

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        k_prior, k_nif = jr.split(key)
        with child_scope("prior"):
            z, log_q = sample_from(self.prior, k_prior, cond=cond, temperature=temperature)
        with child_scope("nif"):
            x, c = self.nif(z, True, key=k_nif, cond=cond)
        return x, log_q + c


importance_weighted = ImportanceWeighted
"""NuX's spelling of [`nux_eqx.ImportanceWeighted`][]."""
