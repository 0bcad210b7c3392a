"""check_flow must FAIL on broken layers: a test that cannot fail is a defect."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest
from jaxtyping import Array, Float

import nux_eqx as nux
from nux_eqx.testing import check_flow

V = Float[Array, " d"]
S = Float[Array, ""]


class _Affine(nux.AbstractBijection):
    """A correct elementwise affine layer (the control)."""

    log_s: Float[Array, " d"] | None = None
    b: Float[Array, " d"] | None = None

    def init(self, x_batch, *, key, cond=None):
        d = x_batch.shape[-1]
        return eqx.tree_at(
            lambda s: (s.log_s, s.b), self, (jnp.zeros(d), jnp.zeros(d)), is_leaf=lambda v: v is None
        )

    def transform(self, x: V, reverse: bool, *, key, cond) -> tuple[V, S]:
        if reverse:
            return x * jnp.exp(self.log_s) + self.b, -jnp.sum(self.log_s)
        return (x - self.b) * jnp.exp(-self.log_s), -jnp.sum(self.log_s)


class WrongLogDet(nux.AbstractBijection):
    """Right map, wrong sign of the log-determinant (hidden at init, where log_s = 0)."""

    log_s: Float[Array, " d"] | None = None

    def init(self, x_batch, *, key, cond=None):
        return eqx.tree_at(lambda s: s.log_s, self, jnp.zeros(x_batch.shape[-1]), is_leaf=lambda v: v is None)

    def transform(self, x: V, reverse: bool, *, key, cond) -> tuple[V, S]:
        z = x * jnp.exp(self.log_s) if reverse else x * jnp.exp(-self.log_s)
        return z, jnp.sum(self.log_s)  # should be -sum


class WrongInverse(nux.AbstractBijection):
    w: Float[Array, " d"] | None = None

    def init(self, x_batch, *, key, cond=None):
        return eqx.tree_at(lambda s: s.w, self, jnp.ones(x_batch.shape[-1]), is_leaf=lambda v: v is None)

    def transform(self, x: V, reverse: bool, *, key, cond) -> tuple[V, S]:
        z = x * self.w if reverse else x * self.w  # reverse should divide
        return z, jnp.sum(jnp.log(jnp.abs(self.w)))


class DeadParameter(nux.AbstractBijection):
    w: Float[Array, " d"] | None = None
    unused: Float[Array, " d"] | None = None

    def init(self, x_batch, *, key, cond=None):
        d = x_batch.shape[-1]
        return eqx.tree_at(
            lambda s: (s.w, s.unused), self, (jnp.ones(d), jnp.ones(d)), is_leaf=lambda v: v is None
        )

    def transform(self, x: V, reverse: bool, *, key, cond) -> tuple[V, S]:
        z = x / self.w if reverse else x * self.w
        return z, jnp.sum(jnp.log(jnp.abs(self.w)))


class BadPrior(nux.AbstractPrior):
    """An unnormalised 'density'."""

    def transform(self, x: V, reverse: bool, *, key, cond) -> tuple[V, S]:
        return x, -0.5 * jnp.sum(x**2)  # missing the normalising constant

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        return self(temperature * jr.normal(key, self.in_shape), True)


X = jr.normal(jr.key(0), (6, 3))


def test_control_passes():
    check_flow(nux.Sequential(_Affine(), nux.UnitGaussianPrior()), X, key=jr.key(1))


def test_catches_wrong_log_det():
    with pytest.raises(
        AssertionError,
        match=r"layers\[0\] \(WrongLogDet, scrambled parameters\) failed 'contribution == brute-force",
    ):
        check_flow(nux.Sequential(WrongLogDet(), nux.UnitGaussianPrior()), X, key=jr.key(1))


def test_catches_wrong_inverse():
    with pytest.raises(AssertionError, match=r"WrongInverse.*reverse\(forward\(x\)\) == x"):
        check_flow(WrongInverse(), X, key=jr.key(1))


def test_catches_parameter_without_gradient():
    with pytest.raises(AssertionError, match=r"unused.*gets no gradient"):
        check_flow(DeadParameter(), X, key=jr.key(1))


def test_catches_unnormalised_prior():
    with pytest.raises(AssertionError, match="integrates to 1"):
        check_flow(BadPrior(), X[:, :2], key=jr.key(1))


# --------------------------------------------------------------------------------------
# The tolerance follows the dtype and the conditioning (issue 16): correct layers at their
# defaults pass in float32, a small error in a well-conditioned inverse still fails, and an
# error that float32's conditioning would hide is caught by the float64 round trip.
# --------------------------------------------------------------------------------------


class SlightlyWrongInverse(nux.AbstractBijection):
    """`z = 2x`, reverse `z / 2 * (1 + 1e-4)`: well conditioned, so no loosening applies."""

    def transform(self, x: V, reverse: bool, *, key, cond) -> tuple[V, S]:
        z = x / 2 * (1 + 1e-4) if reverse else 2 * x
        return z, jnp.asarray(x.shape[0] * jnp.log(2.0), x.dtype)


class SkewedSoftmaxPP(nux.AbstractBijection):
    """SoftmaxPP whose reverse takes the last probability as `1 - (1 + 1e-6) sum(z)`: an
    error shaped like float32's own rounding there (below what its conditioning explains),
    but an error, which float64 resolves."""

    def transform(self, x: V, reverse: bool, *, key, cond) -> tuple[V, S]:
        if reverse:
            y = 0.4 * (jnp.log(x) - jnp.log1p(-(1 + 1e-6) * jnp.sum(x)))
            return y, nux.SoftmaxPP().transform(y, False, key=None, cond=None)[1]
        return nux.SoftmaxPP().transform(x, False, key=None, cond=None)


def test_softmaxpp_and_neural_spline_at_their_defaults_pass():
    """The issue's examples: float32 cannot reconstruct these to 1e-5 (SoftmaxPP's last
    probability is ~1e-3; the scrambled default spline has bins of slope ~1e-7), which the
    conditioning accounts for."""
    check_flow(nux.SoftmaxPP(), jr.normal(jr.key(1), (16, 5)), key=jr.key(1))
    # the scrambled default NeuralSpline: the registry's "defaults-NeuralSpline" case


def test_well_conditioned_inverse_error_still_fails():
    with pytest.raises(AssertionError, match=r"SlightlyWrongInverse.*beyond what its conditioning explains"):
        check_flow(SlightlyWrongInverse(), X, key=jr.key(1))


def test_error_hidden_by_float32_conditioning_is_caught_in_float64():
    with pytest.raises(AssertionError, match=r"SkewedSoftmaxPP.*in float64"):
        check_flow(SkewedSoftmaxPP(), 2 * jr.normal(jr.key(1), (8, 4)), key=jr.key(1))


# --------------------------------------------------------------------------------------
# A map that is numerically flat where the data are: a logistic mixture of two sharp
# components far apart (the parameters a scrambled FlowPlusPlus coupling drew; slope
# ~1e-18 between them). float32 and float64 both return some point of the flat stretch, so
# the round trip holds only by the conditioning; the reverse must then report the
# contribution of the point it returns, and a wrong one still fails.
# --------------------------------------------------------------------------------------

_FLAT = (
    jnp.array([6.9608707, -2.467231]),  # logits
    jnp.array([-6.0044956, 1.6509936]),  # means
    jnp.array([-2.4391713, -3.966801]),  # log-scales
)


class FlatMixture(nux.AbstractBijection):
    """`logistic_mixture_logit` at the fixed parameters `_FLAT`; `offset` is added to the
    reverse contribution (0 for the correct layer)."""

    offset: float = eqx.field(static=True, default=0.0)

    def transform(self, x: V, reverse: bool, *, key, cond) -> tuple[V, S]:
        params = tuple(p.astype(x.dtype) for p in _FLAT)
        out, log_dg = nux.logistic_mixture_logit(x, *params, inverse=reverse)
        return out, jnp.sum(log_dg) + (self.offset if reverse else 0.0)


def test_numerically_flat_map_passes_and_a_wrong_reverse_contribution_fails():
    x = jr.uniform(jr.key(3), (8, 3), minval=-3.5, maxval=1.0)
    check_flow(FlatMixture(), x, key=jr.key(1), scramble_params=False)
    with pytest.raises(AssertionError, match=r"FlatMixture.*contribution"):
        check_flow(FlatMixture(offset=0.5), x, key=jr.key(1), scramble_params=False)


def test_log_det_reference_is_exact_for_triangular_jacobians():
    # a triangular Jacobian with a tiny diagonal under large off-diagonal terms (what a
    # scrambled autoregressive spline gives): LU with pivoting loses the log-determinant,
    # the log-diagonal is exact; other matrices get slogdet and an error estimate
    from nux_eqx.testing import _log_abs_det

    with jax.enable_x64(True):
        d = jnp.array([1e-7, 3e-6, 2e-7, 5e-7, 1e-6, 4e-7])
        L = jnp.tril(1e3 * jr.normal(jr.key(0), (6, 6)), -1) + jnp.diag(d)
        value, err = _log_abs_det(L)
        assert float(value) == pytest.approx(float(jnp.sum(jnp.log(d))), rel=1e-14) and float(err) == 0.0
        value, err = _log_abs_det(L.T)  # upper triangular too
        assert float(value) == pytest.approx(float(jnp.sum(jnp.log(d))), rel=1e-14) and float(err) == 0.0
        M = jr.normal(jr.key(1), (5, 5))
        value, err = _log_abs_det(M)
        assert float(value) == pytest.approx(float(jnp.linalg.slogdet(M)[1])) and 0 < float(err) < 1e-10


def test_half_logdet_gram_keeps_float32_accuracy_for_ill_conditioned_jacobians():
    from nux_eqx.injective._gaussian_nif import half_logdet_gram

    U, _ = jnp.linalg.qr(jr.normal(jr.key(0), (8, 3)))
    V, _ = jnp.linalg.qr(jr.normal(jr.key(1), (3, 3)))
    J = (U * jnp.array([1e4, 1.0, 1e-1])) @ V.T  # cond 1e5: JᵀJ's is 1e10, beyond float32
    with jax.enable_x64(True):
        exact = float(0.5 * jnp.linalg.slogdet(J.astype(jnp.float64).T @ J.astype(jnp.float64))[1])
    assert float(half_logdet_gram(J)) == pytest.approx(exact, abs=1e-3)
    normal_equations = float(0.5 * jnp.linalg.slogdet(J.T @ J)[1])
    assert abs(normal_equations - exact) > 10 * abs(float(half_logdet_gram(J)) - exact)


class OffLogQPrior(nux.AbstractPrior):
    """A normalised standard normal whose sampler reports log_q off by 0.01 nats."""

    def transform(self, x: V, reverse: bool, *, key, cond) -> tuple[V, S]:
        return x, -0.5 * jnp.sum(x**2) - 0.5 * x.size * jnp.log(2 * jnp.pi)

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        x = jr.normal(key, self.in_shape)
        return x, self(x)[1] + 0.01


def test_catches_sampler_log_q_off_by_a_little():
    # the sample's rounding allowance (a sharp density moves with the sample's last bit)
    # must not excuse a log_q that is simply wrong
    with pytest.raises(AssertionError, match="sample's log_q == forward log-density"):
        check_flow(OffLogQPrior(), X, key=jr.key(1))
