"""`check_flow`: the one correctness check every layer and container goes through.

It is public (NuX's `flow_test`): use it on your own custom layers.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from ._flow import (
    AbstractBijection,
    AbstractFlow,
    AbstractInjective,
    AbstractPrior,
    AbstractSurjective,
    capture_records,
    init,
    not_traced,
    trainable,
)
from ._maths import LOG_2PI, keyed_vmap

__all__ = ["check_flow", "scramble"]


def _host_rng(key: PRNGKeyArray) -> np.random.Generator:
    """A NumPy generator seeded by a concrete JAX key: random draws on the host compile
    nothing (a jitted `jr.normal` per leaf costs seconds of XLA:CPU compile per flow)."""
    data = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
    return np.random.default_rng(data.astype(np.uint64).ravel().tolist())


def scramble(flow: AbstractFlow, key: PRNGKeyArray, scale: float = 0.1) -> AbstractFlow:
    """Add `scale * N(0, 1)` to every trainable leaf of `flow`.

    Identity-at-init hides bugs (a zero-initialised coupling or a 1x1 convolution started
    at the identity has a trivially right log-det); `check_flow` repeats its checks on
    scrambled parameters.

    **Arguments:**

    - `flow`: a flow (initialised).
    - `key`: a PRNG key; the same key gives the same noise.
    - `scale`: the standard deviation of the added noise.

    **Returns:**

    A copy of `flow` with perturbed trainable parameters. Works under `jax.jit` too (then
    the noise is drawn with `jax.random`; outside, it is drawn on the host)."""
    params, static = trainable(flow)
    leaves, treedef = jax.tree.flatten(params)
    if not not_traced(leaves, key):
        keys = jr.split(key, max(len(leaves), 1))
        leaves = [leaf + scale * jr.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
    else:
        rng = _host_rng(key)
        leaves = [
            jnp.asarray(np.asarray(leaf) + scale * rng.standard_normal(leaf.shape), leaf.dtype)
            for leaf in leaves
        ]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def _to64(tree: PyTree) -> PyTree:
    return jax.tree.map(
        lambda a: (
            jnp.asarray(a, jnp.float64)
            if eqx.is_inexact_array(a) or isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating)
            else a
        ),
        tree,
    )


def _err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        same = np.array_equal(a, b)
        return 0.0 if same else math.inf
    return float(np.max(np.abs(a - b) / (1.0 + np.abs(b)))) if a.size else 0.0


def _declared_tolerance(flow: PyTree) -> float:
    """The largest `check_tolerance` any layer inside `flow` declares (0 if none)."""
    found = [0.0]

    def visit(node):
        if isinstance(node, AbstractFlow) and node.check_tolerance is not None:
            found.append(float(node.check_tolerance))
        return False

    jax.tree_util.tree_leaves(flow, is_leaf=visit)  # visits every node
    return max(found)


_EPS32 = float(np.finfo(np.float32).eps)


class _Checker:
    """The one place where check_flow decides how close is close enough.

    `tol` is the relative tolerance of a well-conditioned float32 computation (the
    argument of `check_flow`); the error of a comparison is `max |a - b| / (1 + |b|)`.

    - **dtype.** Wider types keep `tol`; narrower ones (bfloat16, float16) scale it by
      `eps(dtype) / eps(float32)`.
    - **conditioning.** A comparison that fails this base tolerance is given a second
      chance when the compared value is ill-conditioned: the map is re-evaluated in
      float64 with every float input and parameter multiplied by `1 + rel * (random
      sign)`, `rel = tol * eps(dtype) / eps(float32)` (`tol` itself in float32: about 84
      units of roundoff), in three random directions and their opposites, and `rho`, the
      largest change of each compared entry, is what the dtype's rounding can do to it.
      The entry passes when `|a - b| <= max(tol (1 + |b|), rho)`: the result is as good as
      an exact evaluation with inputs and parameters off by `rel`. (`rho` is an absolute
      change: a reverse that lands elsewhere on a numerically flat stretch is compared
      with the true point by the distance its landing point moves, whatever the sizes of
      the two points.) A well-conditioned map has
      `rho ~ rel`, so nothing changes for it; an ill-conditioned one (a bin of slope 1e-6,
      a last probability of 1e-3, a wide network whose reduction order changes under
      `vmap`) gets the tolerance its conditioning explains, jumps included (a point that
      changes spline bin when a knot moves by 100 ulps). A round trip that passes only
      this way is repeated in float64, where it must pass too (so the inverse formula is
      still checked where float32 cannot resolve it).
    - **preimage.** A round trip that fails even so passes if the reverse returned a
      preimage: `forward(reverse(z)) == z` within the forward map's conditioning, in the
      working precision and in float64. A map can be numerically non-injective (a
      scrambled autoregressive spline with slopes ~1e-7 sends points 5 apart to the same
      `z` within 1e-14), and its sequential inverse amplifies float64's rounding past any
      perturbation estimate; a wrong inverse still fails, as its output is no preimage.
    - **brute-force log-determinant.** The float64 reference `slogdet(J)` is trusted to
      `n cond(J) eps` (at least 1e-6); a triangular `J` (an autoregressive layer in its
      own ordering) is compared with its exact log-diagonal instead.
    - **declared floor.** A layer whose inverse or log-determinant is numerical declares
      `AbstractFlow.check_tolerance` (e.g. `ContinuousFlow`: its solver's accuracy); every
      comparison on it, and on a flow containing it, is loosened to at least that floor.
    """

    def __init__(self, tol: float, dtype, floor: float = 0.0):
        self.user_tol = tol
        self.dtype = dtype
        self.floor = floor
        self.ratio = self._eps(dtype) / _EPS32
        self.tol = tol * max(1.0, self.ratio)

    @staticmethod
    def _eps(dtype) -> float:
        return float(jnp.finfo(dtype).eps) if jnp.issubdtype(dtype, jnp.floating) else _EPS32

    def rel(self, dtype) -> float:
        """The relative size of the perturbations that measure the conditioning."""
        return self.user_tol * self._eps(dtype) / _EPS32

    def for_layer(self, layer: AbstractFlow) -> "_Checker":
        return _Checker(self.user_tol, self.dtype, _declared_tolerance(layer))

    def close(self, where: str, what: str, a, b, tol: float | None = None, rounding=None) -> bool:
        """Pass if `a` is close to `b`; return whether the conditioning was needed.

        `rounding`: an optional zero-argument function returning `rho` (broadcastable to
        `b`), the absolute change of the compared value under the perturbations of
        `rel`; called only when the base tolerance fails."""
        tol = max(self.tol if tol is None else tol * max(1.0, self.ratio), self.floor)
        e = _err(a, b)
        if e <= tol:
            return False
        msg = f"check_flow: {where} failed '{what}': max relative error {e:.3g} > {tol:g}"
        if rounding is None or not math.isfinite(e):
            raise AssertionError(msg + ".")
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        rho = np.broadcast_to(np.asarray(rounding(), np.float64), b.shape)
        allowed = np.maximum(tol, rho / (1.0 + np.abs(b)))
        excess = np.abs(a - b) / (1.0 + np.abs(b)) / allowed
        worst = np.unravel_index(np.argmax(excess), excess.shape) if excess.ndim else ()
        if not excess[worst] <= 1.0:
            raise AssertionError(
                msg + f", and beyond what its conditioning explains: at {tuple(map(int, worst))} the error "
                f"{float(np.abs(a - b)[worst] / (1 + np.abs(b)[worst])):.3g} exceeds {float(allowed[worst]):.3g}, "
                "the change that perturbing every input and parameter by the relative tolerance causes."
            )
        return True

    def finite(self, where: str, what: str, *arrays):
        for a in arrays:
            for leaf in jax.tree.leaves(a):
                if not np.all(np.isfinite(np.asarray(leaf))):
                    raise AssertionError(f"check_flow: {where} failed '{what}': non-finite values.")


def _lazy(fn):
    cache = []

    def get():
        if not cache:
            cache.append(fn())
        return cache[0]

    return get


_EFFECT_KEY = 20240611  # the random perturbation directions are fixed: reproducible checks


def _rounding_effect(flow, xs, keys, cond, reverse, rel: float, n_dir: int = 3):
    """`(rho_out, rho_contribution)`: the largest (absolute) change of each output entry and
    contribution when every float input and parameter of the (batched) call is multiplied
    by `1 + rel * sign` (random signs), over `n_dir` draws and their opposites; evaluated in float64, so that
    it measures how sensitive the map is, not float64's own rounding. See `_Checker`."""
    with jax.enable_x64(True):
        flow64, xs64, cond64 = _to64(flow), _to64(jnp.asarray(xs)), _to64(cond)
        params = eqx.filter((flow64, xs64), eqx.is_inexact_array)
        rng = np.random.default_rng(_EFFECT_KEY)

        # each random direction and its opposite: a threshold (a spline knot, a bin edge)
        # that rounding can cross in one direction is crossed by one of the two. Signs are
        # drawn on the host: threefry inside the jit would cost seconds of compile per flow.
        def directions(v):
            s = rng.choice(np.array([-1.0, 1.0]), size=(n_dir, *v.shape))
            return jnp.asarray(np.concatenate([s, -s]))

        signs = jax.tree.map(directions, params)
        out = _rounding_effect_jit(flow64, xs64, keys, cond64, reverse, signs, rel)
        return tuple(np.asarray(o) for o in out)


@eqx.filter_jit
def _rounding_effect_jit(flow, xs, keys, cond, reverse, signs, rel):
    params, static = eqx.partition((flow, xs), eqx.is_inexact_array)
    out, c = _vmapped_call(*eqx.combine(params, static), keys, cond, reverse)

    def perturbed(sign):
        moved = jax.tree.map(lambda v, s: v * (1 + rel * s), params, sign)
        o, cc = _vmapped_call(*eqx.combine(moved, static), keys, cond, reverse)
        return jnp.abs(o - out), jnp.abs(cc - c)

    r_out, r_c = jax.lax.map(perturbed, signs)
    return jnp.max(r_out, 0), jnp.max(r_c, 0)


def _vmapped_call(flow, xs, keys, cond, reverse=False):
    return keyed_vmap(lambda x, k, c: flow(x, reverse, key=k, cond=c), xs, keys, cond)


_jit_call = eqx.filter_jit(_vmapped_call)


def _batched_call(flow, xs, keys, cond, reverse=False):
    # Compiled once per layer structure and shape: the scrambled copy hits the cache.
    return _jit_call(flow, xs, keys, cond, reverse)


def _record_values(flow, x, k, c):
    return [
        (r.x, r.key, r.cond, r.z, r.contribution) for r in capture_records(flow, x, False, key=k, cond=c)[2]
    ]


@eqx.filter_jit
def _batched_records(flow, x_batch, keys, cond_batch):
    return keyed_vmap(lambda x, k, c: _record_values(flow, x, k, c), x_batch, keys, cond_batch)


def _leaf_records(flow, x_batch, keys, cond_batch):
    """Run the flow batched and collect (path, layer, reverse, x, key, cond, z, c) per leaf call."""
    meta = []

    def layers_only(x, k, c):
        recs = capture_records(flow, x, False, key=k, cond=c)[2]
        meta.extend((r.path, r.layer, r.reverse) for r in recs)
        return 0

    c0 = None if cond_batch is None else jax.tree.map(lambda a: a[0], cond_batch)
    jax.eval_shape(layers_only, x_batch[0], keys[0], c0)  # trace only: which leaves, in order
    vals = _batched_records(flow, x_batch, keys, cond_batch)
    return [(*m, *v) for m, v in zip(meta, vals)]


def _slogdet_tall(J):
    # J: (big, small). 0.5 * log det(J^T J).
    return 0.5 * jnp.linalg.slogdet(J.T @ J)[1]


def _check_bijective(ck, where, layer, xd, keys, cond, n_jac):
    z, c = _batched_call(layer, xd, keys, cond)
    ck.finite(where, "forward output is finite", z, c)
    xr, cr = _batched_call(layer, z, keys, cond, reverse=True)
    rev = _lazy(lambda: _rounding_effect(layer, z, keys, cond, True, ck.rel(z.dtype)))
    fwd = _lazy(lambda: _rounding_effect(layer, xd, keys, cond, False, ck.rel(xd.dtype)))
    preimage_only = False
    try:
        loosened = ck.close(where, "reverse(forward(x)) == x", xr, xd, rounding=lambda: rev()[0])
    except AssertionError:
        # A map can be numerically non-injective: a scrambled autoregressive spline with
        # slopes ~1e-7 sends points 5 apart to the same z within 1e-14, and its sequential
        # inverse amplifies float64's rounding past any perturbation estimate. The inverse
        # is still right if what it returns is a preimage of z to working precision.
        if not _returns_a_preimage(ck, where, layer, xr, z, keys, cond):
            raise
        loosened = preimage_only = True
    if not loosened:
        ck.close(where, "same contribution forward and reverse", cr, c, rounding=lambda: rev()[1] + fwd()[1])
    else:
        # The round trip held only by the conditioning: the reverse may land anywhere on
        # a stretch where the map is numerically flat (a logistic mixture between two
        # sharp components: slope 1e-18), and the log-determinant differs there. What
        # must hold is that the reverse reports the contribution of the point it returns.
        _, c_back = _batched_call(layer, xr, keys, cond)
        back = _lazy(lambda: _rounding_effect(layer, xr, keys, cond, False, ck.rel(xr.dtype)))
        ck.close(
            where,
            "reverse's contribution == forward contribution at the point it returns",
            cr,
            c_back,
            rounding=lambda: back()[1],  # both sides are the contribution at xr
        )
        if not preimage_only:  # (a preimage was already checked in float64)
            _round_trip64(ck, where, layer, xd, keys, cond, reverse_first=False)
    _check_jacobian(ck, where, layer, xd, keys, cond, c, n_jac, sign=None)


def _returns_a_preimage(ck, where, layer, xr, z, keys, cond) -> bool:
    """Whether `forward(xr) == z` (the backward error of the reverse) holds within the
    conditioning of the forward map at `xr`, in the working precision and again in float64
    (reverse then forward from `z`)."""
    try:
        zb, _ = _batched_call(layer, xr, keys, cond)
        fwd = _lazy(lambda: _rounding_effect(layer, xr, keys, cond, False, ck.rel(xr.dtype)))
        ck.close(where, "forward(reverse(z)) == z", zb, z, rounding=lambda: fwd()[0])
        _round_trip64(ck, where, layer, z, keys, cond, reverse_first=True)
    except AssertionError:
        return False
    return True


def _round_trip64(ck, where, layer, xd, keys, cond, reverse_first):
    """The round trip again in float64, for a layer whose float32 round trip only passed
    by its conditioning: the inverse must still be right where float64 resolves it."""
    with jax.enable_x64(True):
        layer64, x64, c64 = _to64(layer), jnp.asarray(np.asarray(xd, np.float64)), _to64(cond)
        mid, _ = _batched_call(layer64, x64, keys, c64, reverse=reverse_first)
        back, _ = _batched_call(layer64, mid, keys, c64, reverse=not reverse_first)
        what = "forward(reverse(z)) == z" if reverse_first else "reverse(forward(x)) == x"
        ck.close(
            where,
            f"{what} in float64 (float32 is ill-conditioned here)",
            back,
            x64,
            rounding=lambda: _rounding_effect(layer64, mid, keys, c64, not reverse_first, ck.rel(np.float64))[
                0
            ],
        )


def _check_jacobian(ck, where, layer, xd, keys, cond, c32, n_jac, sign):
    """Compare the contribution with the brute-force Jacobian term in float64.

    `sign=None`: square Jacobian, `log|det J|`. Otherwise a dimension-changing map; the
    Jacobian J of the map from the lower- to the higher-dimensional side is tall and the
    contribution must be `sign * 0.5 * slogdet(J^T J)`.
    """
    with jax.enable_x64(True):
        layer64 = _to64(layer)
        for i in range(min(n_jac, xd.shape[0])):
            x0 = jnp.asarray(np.asarray(xd[i], np.float64))
            k0 = None if keys is None else keys[i]
            c0 = None if cond is None else _to64(jax.tree.map(lambda a, i=i: a[i], cond))
            z_size = math.prod(layer.out_shape)
            if sign is None and z_size != x0.size:
                raise AssertionError(
                    f"check_flow: {where} is declared bijective but maps {x0.size} to {z_size} values."
                )
            contrib, ref, ref_error = _jacobian_term(layer64, x0, k0, c0, sign)
            # the brute-force value is only as good as the Jacobian's conditioning allows
            # (a non-finite estimate: J is singular in float64, which a bijection must not be)
            tol = max(1e-6, float(ref_error)) if math.isfinite(float(ref_error)) else 1e-6
            ck.close(where, "contribution == brute-force log|det J| (float64)", contrib, ref, tol=tol)
            ck.close(where, "float32 contribution matches float64", c32[i], contrib, tol=1e-3)


@eqx.filter_jit
def _jacobian_term(layer64, x0, k0, c0, sign):
    z0, contrib = layer64(x0, False, key=k0, cond=c0)
    if sign is None:

        def f(v):
            return layer64(v.reshape(x0.shape), False, key=k0, cond=c0)[0].reshape(-1)

        return contrib, *_log_abs_det(jax.jacobian(f)(x0.reshape(-1)))
    if x0.size >= z0.size:  # forward reduces: J = d reverse / dz

        def g(v):
            return layer64(v.reshape(z0.shape), True, key=None, cond=c0)[0].reshape(-1)

        J = jax.jacobian(g)(z0.reshape(-1))
    else:

        def h(v):
            return layer64(v.reshape(x0.shape), False, key=None, cond=c0)[0].reshape(-1)

        J = jax.jacobian(h)(x0.reshape(-1))
    return contrib, sign * _slogdet_tall(J), _slogdet_error(J.T @ J) / 2


def _slogdet_error(M):
    """How far `slogdet(M)` in float64 can be from the truth: `n cond(M) eps` (LU's
    backward error through `d log|det| = tr(M^-1 dM)`)."""
    return M.shape[0] * jnp.linalg.cond(M) * jnp.finfo(M.dtype).eps


def _log_abs_det(J):
    """`(log|det J|, its possible error)`. A triangular `J` (an autoregressive layer in its
    own ordering) gets the exact sum of its log-diagonal: LU's pivoting on a triangular
    matrix with a tiny diagonal (slopes 1e-7 under large off-diagonal terms) was off by
    0.3 where the layer's own sum was right."""
    triangular = jnp.all(jnp.triu(J, 1) == 0) | jnp.all(jnp.tril(J, -1) == 0)
    exact = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(J))))
    return jnp.where(triangular, exact, jnp.linalg.slogdet(J)[1]), jnp.where(
        triangular, 0.0, _slogdet_error(J)
    )


def _check_injective(ck, where, layer, xd, keys, cond, n_jac):
    keys = None  # injective layers are checked as deterministic maps (no key)
    z, c = _batched_call(layer, xd, keys, cond)
    ck.finite(where, "forward output is finite", z, c)
    d_in, d_out = math.prod(xd.shape[1:]), math.prod(z.shape[1:])
    if d_in > d_out:
        # data lives on a manifold: project, then check low -> high -> low.
        x_proj, _ = _batched_call(layer, z, keys, cond, reverse=True)
        z2, c2 = _batched_call(layer, x_proj, keys, cond)
        effect = _lazy(lambda: _rounding_effect(layer, x_proj, keys, cond, False, ck.rel(x_proj.dtype))[0])
        if ck.close(where, "forward(reverse(z)) == z", z2, z, rounding=effect):
            _round_trip64(ck, where, layer, z, keys, cond, reverse_first=True)
        _check_jacobian(ck, where, layer, x_proj, keys, cond, c2, n_jac, sign=-1.0)
    else:
        xr, _ = _batched_call(layer, z, keys, cond, reverse=True)
        effect = _lazy(lambda: _rounding_effect(layer, z, keys, cond, True, ck.rel(z.dtype))[0])
        if ck.close(where, "reverse(forward(x)) == x", xr, xd, rounding=effect):
            _round_trip64(ck, where, layer, xd, keys, cond, reverse_first=False)
        _check_jacobian(ck, where, layer, xd, keys, cond, c, n_jac, sign=1.0)


def _check_prior(ck, where, layer, xd, keys, cond, n_mc):
    z, c = _batched_call(layer, xd, keys, cond)
    ck.finite(where, "log-density is finite", c)
    if layer.in_shape == layer.out_shape:
        _, cr = _batched_call(layer, z, keys, cond, reverse=True)
        ck.close(where, "same contribution forward and reverse", cr, c)
    # sampling: finite, right shape, and log_q agrees with the forward density
    cax = None if cond is None else 0
    xs, lq = jax.vmap(lambda k, cc: layer.sample_and_log_prob(k, cond=cc), in_axes=(0, cax))(keys, cond)
    if tuple(xs.shape[1:]) != layer.in_shape:
        raise AssertionError(
            f"check_flow: {where} sample has shape {xs.shape[1:]}, expected {layer.in_shape}."
        )
    ck.finite(where, "samples are finite", xs, lq)
    _, lp = _batched_call(layer, xs, keys, cond)
    # The sample is stored in the working precision: where the density is sharp (a
    # conditional prior with a tiny scale), its rounding alone moves the forward density.
    ck.close(
        where,
        "sample's log_q == forward log-density",
        lq,
        lp,
        tol=1e-4,
        rounding=lambda: _rounding_effect(layer, xs, keys, cond, False, ck.rel(xs.dtype))[1],
    )
    # normalisation on small cases: importance sampling from a broad Gaussian
    d = math.prod(layer.in_shape)
    if d <= 2 and n_mc:
        c0 = None if cond is None else jax.tree.map(lambda a: a[0], cond)
        xs0, _ = jax.vmap(lambda k: layer.sample_and_log_prob(k, cond=c0))(jr.split(keys[0], 512))
        mu = jnp.mean(xs0.reshape(512, -1), 0)
        sd = 3.0 * jnp.std(xs0.reshape(512, -1), 0) + 1e-3
        eps = jr.normal(keys[-1], (n_mc, d), xs0.dtype)
        u = mu + sd * eps
        log_q = jnp.sum(-0.5 * eps**2 - jnp.log(sd) - 0.5 * LOG_2PI, -1)
        lp = _densities(layer, u, c0)
        total = float(jnp.mean(jnp.exp(lp - log_q)))
        if not abs(total - 1.0) < 0.05:
            raise AssertionError(
                f"check_flow: {where} failed 'density integrates to 1': Monte-Carlo integral {total:.4f}."
            )


@eqx.filter_jit
def _densities(layer, u, c0):
    return jax.vmap(lambda v: layer(v.reshape(layer.in_shape), key=None, cond=c0)[1])(u)


def _check_stochastic(ck, where, layer, xd, keys, cond):
    z, c = _batched_call(layer, xd, keys, cond)
    ck.finite(where, "output and contribution are finite with a key", z, c)
    z2, c2 = _batched_call(layer, xd, keys, cond)
    ck.close(where, "same key gives the same result", z2, z, tol=0.0)
    xr, cr = _batched_call(layer, z, keys, cond, reverse=True)
    ck.finite(where, "reverse output is finite", xr, cr)


@eqx.filter_jit
def _nested(flow, xs, ks, cs):
    return keyed_vmap(lambda a, b, c: _vmapped_call(flow, a, b, c), xs, ks, cs)


def _check_consistency(ck, flow, x_batch, keys, cond_batch, label):
    """Same results unbatched without jit, vmapped under jit, doubly vmapped."""
    z, c = _batched_call(flow, x_batch, keys, cond_batch)
    ck.finite(f"{type(flow).__name__} ({label})", "forward output is finite", z, c)
    c0 = None if cond_batch is None else jax.tree.map(lambda a: a[0], cond_batch)
    z0, c0_ = flow(x_batch[0], key=keys[0], cond=c0)
    name = f"{type(flow).__name__} ({label})"
    # Different batching compiles to different reduction orders: the results may differ by
    # the float32 rounding of an ill-conditioned map (see `_Checker`).
    effect = _lazy(lambda: _rounding_effect(flow, x_batch, keys, cond_batch, False, ck.rel(x_batch.dtype)))
    ck.close(
        name,
        "unbatched call without jit == vmapped call under jit",
        z0,
        z[0],
        tol=1e-4,
        rounding=lambda: effect()[0][0],
    )
    ck.close(
        name,
        "unbatched contribution without jit == vmapped under jit",
        c0_,
        c[0],
        tol=1e-4,
        rounding=lambda: effect()[1][0],
    )
    n = x_batch.shape[0] - x_batch.shape[0] % 2
    if n >= 2:
        resh = lambda a: a[:n].reshape(2, n // 2, *a.shape[1:])  # noqa: E731
        zn, cn = _nested(
            flow, resh(x_batch), resh(keys), None if cond_batch is None else jax.tree.map(resh, cond_batch)
        )
        ck.close(
            name,
            "nested vmap == vmap (output)",
            zn.reshape(z[:n].shape),
            z[:n],
            rounding=lambda: effect()[0][:n],
        )
        ck.close(
            name,
            "nested vmap == vmap (contribution)",
            cn.reshape(-1),
            c[:n],
            rounding=lambda: effect()[1][:n],
        )
    zr, cr = _batched_call(flow, z, keys, cond_batch, reverse=True)
    ck.finite(name, "reverse output is finite", zr, cr)


@eqx.filter_jit
def _grads(params, static, x_batch, keys, cond_batch):
    def loss(p):
        z, c = _vmapped_call(eqx.combine(p, static), x_batch, keys, cond_batch)
        return jnp.sum(c) - 0.5 * jnp.sum(z**2)

    return jax.grad(loss)(params)


def _check_gradients(flow, x_batch, keys, cond_batch, label):
    params, static = trainable(flow)
    grads = _grads(params, static, x_batch, keys, cond_batch)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        where = f"{type(flow).__name__}{jax.tree_util.keystr(path)} ({label})"
        if not np.all(np.isfinite(np.asarray(g))):
            raise AssertionError(f"check_flow: {where} has a non-finite gradient.")
        if np.size(g) and not np.any(np.asarray(g) != 0):  # an empty leaf has nothing to train
            raise AssertionError(
                f"check_flow: {where} gets no gradient: d(sum(contribution) - 0.5||z||^2)/dparam is zero. "
                "A parameter that cannot be trained should be a static field or wrapped in NonTrainable."
            )


def check_flow(
    flow: AbstractFlow,
    x_batch: Array,
    *,
    key: PRNGKeyArray,
    cond_batch: PyTree = None,
    scramble_params: bool = True,
    scramble_scale: float = 0.1,
    n_jacobian: int = 2,
    n_monte_carlo: int = 20000,
    tol: float = 1e-5,
) -> AbstractFlow:
    """Check a flow the way every nux_eqx layer is checked (NuX's `flow_test`).

    The flow (initialised on `x_batch` first if it is not) is run on the batch; every leaf
    layer's input is captured and the layer is checked by its kind (its base class):

    - [`nux_eqx.AbstractBijection`][]: `reverse(forward(x)) == x`, the same contribution both ways, and the
      contribution equals the brute-force `log|det J|` of `jax.jacobian` in float64;
    - [`nux_eqx.AbstractInjective`][] (deterministic, dimension-changing): with `J` the tall Jacobian of the
      map from the lower- to the higher-dimensional side, the contribution is
      `+0.5 slogdet(JᵀJ)` when forward goes up in dimension and `-0.5 slogdet(JᵀJ)` when it
      goes down; low -> high -> low round-trips;
    - [`nux_eqx.AbstractPrior`][]: finite log-density, samples of the right shape whose `log_q` equals the
      forward density, and (for at most 2 dimensions) a Monte-Carlo integral of 1;
    - [`nux_eqx.AbstractSurjective`][]: finite outputs and contributions with a key, the same
      result for the same key.

    For the whole flow: the same results unbatched, through `jax.vmap`, doubly nested
    `jax.vmap`, and under `jax.jit`. Then every trainable parameter is scrambled
    (`+= 0.1 * N(0, 1)`), the checks are repeated, and the gradient of
    `sum(contribution) - 0.5 ||z||^2` must be finite and non-zero for every trainable leaf.

    **Arguments:**

    - `flow`: the flow, initialised or not.
    - `x_batch`: data with one leading batch axis (a few examples suffice; use 4-8).
    - `key`: a PRNG key.
    - `cond_batch`: batched conditioning, or `None`.
    - `scramble_params`: repeat the checks on scrambled parameters (default `True`).
    - `scramble_scale`: the noise those parameters get (default `0.1`; see `scramble`).
    - `n_jacobian`: how many examples get the brute-force Jacobian check.
    - `n_monte_carlo`: samples for the normalisation check of low-dimensional priors.
    - `tol`: relative tolerance (error `max |a - b| / (1 + |b|)`) of a well-conditioned
      float32 computation.

    **Tolerance.** One rule, in `_Checker`, for every comparison: `tol` holds for float32
    and wider dtypes and is scaled by `eps(dtype) / eps(float32)` for narrower ones. A
    comparison that fails it is retried against the map's **conditioning**: the map is
    re-evaluated in float64 with every float input and parameter multiplied by
    `1 + rel * (random sign)` (`rel = tol` in float32, scaled by `eps(dtype) / eps(float32)`
    otherwise; three random directions and their opposites), and an entry passes when its error is at most the
    relative change this produces: the result must be as good as an exact evaluation with
    inputs and parameters off by `rel`. So a layer whose inverse is exact but
    ill-conditioned in float32 (SoftmaxPP when the last probability is ~1e-3, a spline bin
    of slope ~1e-7, a wide conditioner whose reduction order changes under `vmap`) passes, while an error in a
    well-conditioned map does not; and a round trip that passes only this way is repeated
    in float64, where it must pass too. The error message says when the conditioning was
    consulted and by how much the error exceeded it. (A map that is ill-conditioned
    everywhere is then only checked in float64: use float64 data to check it tightly.) A
    layer whose inverse or log-determinant is numerical declares its own floor in
    `AbstractFlow.check_tolerance` (e.g. `ContinuousFlow`: the solver's accuracy), and
    every comparison on it (and on a flow containing it) is loosened to at least that.

    **Returns:**

    The initialised flow. Raises `AssertionError` naming the layer, the check and the
    error when a check fails.

    !!! example

        ```python
        import jax
        import nux_eqx as nux
        from nux_eqx.testing import check_flow

        x = jax.random.normal(jax.random.key(0), (6, 3))       # a few examples suffice
        flow = check_flow(nux.Sequential(nux.ActNorm(), nux.Reverse(), nux.UnitGaussianPrior()),
                          x, key=jax.random.key(1))            # raises AssertionError on a failure
        print(flow.in_shape)                                   # (3,): the initialised flow
        ```
    """
    x_batch = jnp.asarray(x_batch)
    k_init, k_scr, k_run = jr.split(key, 3)
    if not flow.is_initialised:
        flow = eqx.filter_jit(init)(flow, x_batch, key=k_init, cond=cond_batch)
    ck = _Checker(tol, x_batch.dtype, _declared_tolerance(flow))
    keys = jr.split(k_run, x_batch.shape[0])
    versions = [("at init", flow)]
    if scramble_params:
        versions.append(("scrambled parameters", scramble(flow, k_scr, scramble_scale)))
    for label, f in versions:
        _check_consistency(ck, f, x_batch, keys, cond_batch, label)
        for path, layer, rev, x_in, k_in, c_in, z_out, _ in _leaf_records(f, x_batch, keys, cond_batch):
            where = f"{path or type(layer).__name__} ({type(layer).__name__}, {label})"
            xd = z_out if rev else x_in  # the layer's data-side batch
            lck = ck.for_layer(layer)
            k_layer = k_in if k_in is not None else keys
            if isinstance(layer, AbstractBijection):
                _check_bijective(lck, where, layer, xd, k_layer, c_in, n_jacobian)
            elif isinstance(layer, AbstractInjective):
                _check_injective(lck, where, layer, xd, k_layer, c_in, n_jacobian)
            elif isinstance(layer, AbstractPrior):
                _check_prior(lck, where, layer, xd, keys, c_in, n_monte_carlo)
            elif isinstance(layer, AbstractSurjective):
                _check_stochastic(lck, where, layer, xd, keys, c_in)
            else:  # unreachable: AbstractFlow refuses a concrete leaf without a kind
                raise AssertionError(f"check_flow: {where} is a {type(layer).__name__} of no known kind.")
        if label != "at init" or not scramble_params:
            _check_gradients(f, x_batch, keys, cond_batch, label)
    return flow
