"""NuX's `spectral_norm` wrapper, for conditioner networks: `SpectralNorm`, the factory
wrapper `spectral_norm` and the pure update `update_spectral_norm`."""

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._flow import NonTrainable


def _is_nontrainable(v) -> bool:
    return isinstance(v, NonTrainable)


def _is_weight(v) -> bool:
    return eqx.is_inexact_array(v) and v.ndim >= 2


def _matrix(W: Array) -> Array:
    # 2-D weights as they are ((out, in) for nux_eqx.nn.Linear); higher ranks are read
    # channels-last (HWIO for nux_eqx.nn.Conv2d): (kh * kw * cin, cout).
    return W if W.ndim == 2 else W.reshape(-1, W.shape[-1])


def _unit(v: Array) -> Array:
    n = jnp.linalg.norm(v)
    return v / jnp.where(n > 0, n, 1.0)  # a zero matrix (a zero-initialised last layer) keeps u


def _power_iteration(M: Array, u: Array, n_iters: int) -> tuple[Array, Array]:
    """`n_iters` steps of the power iteration for the top singular pair of `M` from `u`;
    returns the new `u` and `sigma = u^T M v` (both without gradient: the gradient of the
    normalised weight flows through `M` only, as in Miyato et al. 2018)."""
    M_ = jax.lax.stop_gradient(M)
    v = _unit(M_.T @ u)
    for _ in range(n_iters):
        u = _unit(M_ @ v)
        v = _unit(M_.T @ u)
    return u, u @ M_ @ v


def _weights(network) -> tuple[list, Callable]:
    """The weight leaves of `network` (float arrays of rank >= 2, NonTrainable ones left
    alone) and a function that puts replacements back."""
    leaves, treedef = jax.tree.flatten(network, is_leaf=_is_nontrainable)
    idx = [i for i, v in enumerate(leaves) if not _is_nontrainable(v) and _is_weight(v)]

    def put(new):
        out = list(leaves)
        for i, w in zip(idx, new):
            out[i] = w
        return jax.tree.unflatten(treedef, out)

    return [leaves[i] for i in idx], put


class SpectralNorm(eqx.Module):
    """A network whose weight matrices are rescaled to spectral norm at most `scale`
    (NuX's `spectral_norm_wrapper`, Miyato et al. 2018 / residual flows' Lipschitz bound).

    Every float array of rank >= 2 in `network` (2-D weights as they are, higher ranks
    read channels-last as `(kh * kw * cin, cout)`) is used as
    `W / max(1, sigma(W) / scale)`, `sigma(W)` its largest singular value estimated by
    `n_iters` power-iteration steps from the stored vector `u`. Weights whose spectral
    norm is already below `scale` are used unchanged.

    **State, and how it updates.** The vectors `u` are plain arrays of the module, wrapped
    in [`nux_eqx.NonTrainable`][] (the optimiser and `check_flow` skip them): the
    module is an ordinary pytree, with no mutable state. A call starts from the stored
    `u` and does not change it. [`nux_eqx.nn.update_spectral_norm`][] returns a copy of
    any pytree (a whole flow) with every `u` advanced by `n_iters` steps; call it after
    each optimiser step (`flow = update_spectral_norm(flow)`) so that the estimates track
    the weights, as NuX's state update did (`nux_eqx.train.fit` and `make_step` do it for
    you). `u` starts converged (50 steps at build).

    **Arguments:**

    - `network`: the module to wrap (acting on one example).
    - `key`: a PRNG key for the initial `u`.
    - `scale`: the bound on each weight's spectral norm (NuX's default 0.97).
    - `n_iters`: power-iteration steps per call and per update (NuX's
      `spectral_norm_iters`, default 1).
    """

    network: eqx.Module
    u: tuple[NonTrainable, ...]
    scale: float = eqx.field(static=True)
    n_iters: int = eqx.field(static=True)

    def __init__(self, network: eqx.Module, *, key: PRNGKeyArray, scale: float = 0.97, n_iters: int = 1):
        scale = float(scale)
        if not scale > 0:
            raise ValueError(
                f"SpectralNorm: scale (the bound on the spectral norms) must be > 0, got {scale}."
            )
        if isinstance(n_iters, bool) or not isinstance(n_iters, int) or n_iters < 1:
            raise ValueError(f"SpectralNorm: n_iters must be an integer >= 1, got {n_iters!r}.")
        weights, _ = _weights(network)
        us = []
        for W, k in zip(weights, jr.split(key, max(len(weights), 1))):
            M = _matrix(W)
            u, _ = _power_iteration(M, _unit(jr.normal(k, (M.shape[0],), M.dtype)), 50)
            us.append(NonTrainable(u))
        self.network = network
        self.u = tuple(us)
        self.scale = scale
        self.n_iters = n_iters

    def normalised(self) -> eqx.Module:
        """**Returns:** the wrapped network with its weights rescaled (what a call uses)."""
        weights, put = _weights(self.network)
        new = []
        for W, u in zip(weights, self.u):
            _, sigma = _power_iteration(_matrix(W), u.get(), self.n_iters)
            new.append(W / jnp.maximum(1.0, sigma / self.scale).astype(W.dtype))
        return put(new)

    def updated(self) -> "SpectralNorm":
        """**Returns:** a copy with every `u` advanced by `n_iters` power-iteration steps."""
        weights, _ = _weights(self.network)
        us = tuple(
            NonTrainable(_power_iteration(_matrix(W), u.get(), self.n_iters)[0])
            for W, u in zip(weights, self.u)
        )
        return eqx.tree_at(lambda s: s.u, self, us)

    def __call__(self, x, *args, **kwargs):
        return self.normalised()(x, *args, **kwargs)


def update_spectral_norm(tree: PyTree) -> PyTree:
    """Advance the power iteration of every [`nux_eqx.nn.SpectralNorm`][] in `tree`.

    Pure: returns a new pytree (e.g. a whole flow after an optimiser step); everything
    else is unchanged. Works under `jax.jit` / `eqx.filter_jit`.

    **Arguments:**

    - `tree`: any pytree, usually a flow.

    **Returns:**

    `tree` with each `SpectralNorm`'s `u` replaced by `n_iters` further steps.
    """
    is_sn = lambda v: isinstance(v, SpectralNorm)  # noqa: E731
    return jax.tree.map(lambda v: v.updated() if is_sn(v) else v, tree, is_leaf=is_sn)


def spectral_norm(factory: Callable | None = None, *, scale: float = 0.97, n_iters: int = 1) -> Callable:
    """Wrap a network factory so that its networks are [`nux_eqx.nn.SpectralNorm`][]ed.

    Use it wherever a layer takes `network_factory=`:
    `nux.Coupling(network_factory=nux.nn.spectral_norm(my_factory))`.

    **Arguments:**

    - `factory`: `factory(in_shape, out_shape, *, key) -> module`; default
      [`nux_eqx.nn.default_network`][] with its defaults.
    - `scale`: the bound on every weight's spectral norm (default 0.97, as NuX).
    - `n_iters`: power-iteration steps per call and per update (default 1, as NuX).

    **Returns:**

    A factory with the same protocol.
    """
    if factory is None:
        from ._nets import default_network

        factory = default_network
    if not callable(factory):
        raise ValueError(
            f"spectral_norm: factory must be a callable factory(in_shape, out_shape, *, key), got {factory!r}."
        )
    SpectralNorm(eqx.nn.Identity(), key=jr.key(0), scale=scale, n_iters=n_iters)  # check the arguments now
    return _SpectralNormFactory(factory, float(scale), int(n_iters))


@dataclasses.dataclass(frozen=True)
class _SpectralNormFactory:
    """What `spectral_norm` returns: a hashable factory (a layer's static field) that
    checkpoints describe by its fields."""

    factory: Callable
    scale: float
    n_iters: int

    def __call__(self, in_shape, out_shape, *, key):
        k_net, k_u = jr.split(key)
        net = self.factory(in_shape, out_shape, key=k_net)
        return SpectralNorm(net, key=k_u, scale=self.scale, n_iters=self.n_iters)
