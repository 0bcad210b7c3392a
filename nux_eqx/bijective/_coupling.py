"""`Coupling` and `ConditionedCoupling`: RealNVP's affine / additive coupling for vectors
and images, with half / channel / checkerboard masks."""

from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._flow import AbstractBijection, ShapeError
from .._types import AnyShape, Cond, Key, Scalar
from ..nn import cast_floating, cond_features, default_network

Mask = Literal["half", "channel", "checkerboard"]
_MASKS = ("half", "channel", "checkerboard")


# --------------------------------------------------------------------------------------
# The shared machinery. `Coupling` and `ConditionedCoupling` are both final classes with
# the same fields; they share these private functions instead of a base class.
# --------------------------------------------------------------------------------------


def _check_args(owner: str, kind: str, mask: str, parity: int) -> None:
    if kind not in ("affine", "additive"):
        raise ValueError(f"{owner}: kind must be 'affine' or 'additive', got {kind!r}.")
    if mask not in _MASKS:
        raise ValueError(f"{owner}: mask must be one of {_MASKS}, got {mask!r}.")
    if parity not in (0, 1):
        raise ValueError(f"{owner}: parity must be 0 or 1, got {parity!r}.")
    if parity != 0 and mask != "checkerboard":
        raise ValueError(
            f"{owner}: parity={parity} only applies to mask='checkerboard'; with mask={mask!r} "
            "the first half is transformed; alternate halves with `Reverse()` or `OneByOneConv()`."
        )


def _set_fields(layer, owner, kind, hidden_layer_sizes, n_channels, network_factory, mask, parity) -> None:
    """The keywords `Coupling` and `ConditionedCoupling` share, checked and stored (from
    their `__init__`)."""
    _check_args(owner, kind, mask, parity)
    layer.kind = kind
    layer.hidden_layer_sizes = tuple(int(h) for h in hidden_layer_sizes)
    layer.n_channels = int(n_channels)
    layer.network_factory = network_factory
    layer.mask = mask
    layer.parity = int(parity)


def _checkerboard(h: int, w: int, parity: int) -> np.ndarray:
    """The `(h, w, 1)` 0/1 mask: 1 where `(i + j + parity)` is even (transformed)."""
    i, j = np.indices((h, w))
    return ((i + j + parity) % 2 == 0).astype(np.float32)[..., None]


def _shapes(owner: str, layer, shape: tuple[int, ...], n_cond: int) -> tuple[tuple, tuple]:
    """Validate the example shape for the mask; return the network's in and out shapes.

    `n_cond` is the size of the conditioning features' last axis (0 without cond)."""
    if len(shape) not in (1, 3):
        raise ShapeError(f"{owner} takes vectors (d,) or images (h, w, c), got examples of shape {shape}.")
    mult = 2 if layer.kind == "affine" else 1
    if layer.mask == "checkerboard":
        if len(shape) != 3:
            raise ShapeError(
                f"{owner}: mask='checkerboard' is spatial and needs (h, w, c) images, got examples of "
                f"shape {shape}; for vectors use mask='half' (with `Reverse()` between couplings)."
            )
        h, w, c = shape
        if h * w < 2:
            raise ShapeError(
                f"{owner}: mask='checkerboard' needs at least 2 pixels, got a {h}x{w} image; "
                "use mask='channel' instead."
            )
        return (h, w, c + n_cond), (h, w, mult * c)
    d_a = shape[-1] // 2
    d_b = shape[-1] - d_a
    if d_a == 0:
        hint = "for 1-channel images apply `Squeeze()` first or use mask='checkerboard'"
        if len(shape) == 1:
            hint = "a 1-d vector cannot be split"
        raise ShapeError(
            f"{owner} needs at least 2 features on the last axis to split, got shape {shape}; {hint}."
        )
    return (*shape[:-1], d_b + n_cond), (*shape[:-1], mult * d_a)


def _build_network(owner: str, layer, in_shape, out_shape, dtype, key):
    if layer.network_factory is None:
        net = default_network(
            in_shape,
            out_shape,
            key=key,
            hidden_layer_sizes=layer.hidden_layer_sizes,
            n_channels=layer.n_channels,
            # NuX: a random MLP for vectors (faster to train), a zero last conv for images
            zero_init=len(in_shape) != 1,
        )
    else:
        net = layer.network_factory(in_shape, out_shape, key=key)
    out = jax.eval_shape(net, jax.ShapeDtypeStruct(in_shape, dtype))
    if tuple(out.shape) != tuple(out_shape):
        raise ShapeError(f"{owner}: the network maps {in_shape} to {out.shape}, expected {out_shape}.")
    return cast_floating(net, dtype)


def _with_features(inp: Array, feats: Array | None) -> Array:
    if feats is None:
        return inp
    return jnp.concatenate([inp, feats.astype(inp.dtype)], axis=-1)


def _couple(layer, x: Array, reverse: bool, feats: Array | None) -> tuple[Array, Array]:
    """The coupling map on one example; `feats` are extra network inputs (or `None`)."""
    if layer.mask == "checkerboard":
        h, w, c = x.shape
        m = jnp.asarray(_checkerboard(h, w, layer.parity), x.dtype)
        # The untouched entries are the same on both sides, so the network input is too.
        out = layer.network(_with_features(x * (1 - m), feats))
        if layer.kind == "additive":
            t = out * m
            return (x + t if reverse else x - t), jnp.zeros((), x.dtype)
        t, log_s = out[..., :c] * m, jnp.tanh(out[..., c:]) * m
        z = x * jnp.exp(log_s) + t if reverse else (x - t) * jnp.exp(-log_s)
        return z, -jnp.sum(log_s)
    d_a = x.shape[-1] // 2
    x_a, x_b = x[..., :d_a], x[..., d_a:]
    out = layer.network(_with_features(x_b, feats))
    if layer.kind == "additive":
        z_a = x_a + out if reverse else x_a - out
        return jnp.concatenate([z_a, x_b], axis=-1), jnp.zeros((), x.dtype)
    t, log_s = out[..., :d_a], jnp.tanh(out[..., d_a:])
    z_a = x_a * jnp.exp(log_s) + t if reverse else (x_a - t) * jnp.exp(-log_s)
    return jnp.concatenate([z_a, x_b], axis=-1), -jnp.sum(log_s)


class Coupling(AbstractBijection):
    """RealNVP coupling (NuX's `Coupling`), for vectors `(d,)` and images `(h, w, c)`.

    With the default mask the last axis is split into `x_a` (the first `floor(d/2)`
    features / channels) and `x_b`. A network of `x_b` gives `t` (and `log_s`); then
    `z_a = (x_a - t) * exp(-log_s)` with `log_s = tanh(.)` (affine) or `z_a = x_a - t`
    (additive), and `z_b = x_b`. The contribution is `-sum(log_s)`.

    Masks (`mask=`):

    - `"half"` (default): the split above.
    - `"channel"`: the same split on the last axis (channels); the name used for images.
    - `"checkerboard"`: images only. A spatial checkerboard over `(h, w)`, all channels:
      pixel `(i, j)` is transformed when `i + j + parity` is even. The network reads
      `x * (1 - mask)` and outputs `t` and `log_s` for the whole image; they are applied
      only where the mask is 1, and the contribution sums over those entries. Alternate
      `parity=0` and `parity=1` in a stack. Works on one-channel images.

    Pair half / channel masks with `Reverse()` (vectors) or `OneByOneConv()` (images) so
    every feature gets transformed.

    **Arguments:**

    - `kind`: `"affine"` (default) or `"additive"`.
    - `hidden_layer_sizes`: widths of the default `nux_eqx.nn.MLP` (vectors; randomly
      initialised throughout, as NuX's `SimpleMLP`; the image `ConvNet` starts its last
      convolution at zero).
    - `n_channels`: hidden width of the default `nux_eqx.nn.ConvNet` (images).
    - `network_factory`: optional `factory(in_shape, out_shape, *, key) -> module` that
      builds the conditioner for one example. Half / channel masks: the input is `x_b`
      and the output `(.., 2 * d_a)` for affine (`t` then the pre-tanh `log_s`) or
      `(.., d_a)` for additive. Checkerboard: the input is `(h, w, c)` and the output
      `(h, w, 2c)` (affine) or `(h, w, c)` (additive).
    - `mask`: `"half"` (default), `"channel"` or `"checkerboard"`.
    - `parity`: `0` (default) or `1`: which checkerboard squares are transformed.
    """

    network: eqx.Module | None
    kind: Literal["affine", "additive"] = eqx.field(static=True)
    hidden_layer_sizes: tuple[int, ...] = eqx.field(static=True)
    n_channels: int = eqx.field(static=True)
    network_factory: Callable | None = eqx.field(static=True)
    mask: Mask = eqx.field(static=True)
    parity: int = eqx.field(static=True)

    def __init__(
        self,
        kind: Literal["affine", "additive"] = "affine",
        hidden_layer_sizes: Sequence[int] = (1024, 1024, 1024, 1024),
        n_channels: int = 256,
        network_factory: Callable | None = None,
        *,
        mask: Mask = "half",
        parity: int = 0,
    ):
        _set_fields(self, "Coupling", kind, hidden_layer_sizes, n_channels, network_factory, mask, parity)
        self.network = None

    def init(self, x_batch, *, key, cond=None):
        in_shape, out_shape = _shapes("Coupling", self, tuple(x_batch.shape[1:]), 0)
        net = _build_network("Coupling", self, in_shape, out_shape, x_batch.dtype, key)
        return eqx.tree_at(lambda s: s.network, self, net, is_leaf=lambda v: v is None)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        return _couple(self, x, reverse, None)


def _cond_shapes(cond, batched: bool) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(jnp.shape(leaf)[1:] if batched else jnp.shape(leaf)) for leaf in jax.tree.leaves(cond))


class ConditionedCoupling(AbstractBijection):
    """A coupling whose network also reads a conditioning `cond` (NuX's `ConditionedCoupling`).

    The same map as [`nux_eqx.Coupling`][] (same keywords, same masks), but the network
    input is the untouched part of `x` concatenated with
    `nux_eqx.nn.cond_features(cond, x.shape)`: along the last axis for vectors, along
    channels for images (leaves of shape `(h, w, k)` are stacked as channels, other leaves
    are flattened and broadcast over the pixels). `cond` is any pytree of arrays; its leaf
    shapes are recorded at `init` and every call must use the same shapes.

    **Arguments:**

    - `kind`: `"affine"` (default) or `"additive"`.
    - `hidden_layer_sizes`: widths of the default `nux_eqx.nn.MLP` (vectors).
    - `n_channels`: hidden width of the default `nux_eqx.nn.ConvNet` (images).
    - `network_factory`: optional `factory(in_shape, out_shape, *, key) -> module`; the
      input's last axis holds the untouched entries followed by the cond features.
    - `mask`: `"half"` (default), `"channel"` or `"checkerboard"` (see `Coupling`).
    - `parity`: `0` (default) or `1`, for the checkerboard.
    """

    network: eqx.Module | None
    kind: Literal["affine", "additive"] = eqx.field(static=True)
    hidden_layer_sizes: tuple[int, ...] = eqx.field(static=True)
    n_channels: int = eqx.field(static=True)
    network_factory: Callable | None = eqx.field(static=True)
    mask: Mask = eqx.field(static=True)
    parity: int = eqx.field(static=True)
    cond_shape: tuple[tuple[int, ...], ...] | None = eqx.field(static=True)
    needs_cond: ClassVar[bool] = True

    def __init__(
        self,
        kind: Literal["affine", "additive"] = "affine",
        hidden_layer_sizes: Sequence[int] = (1024, 1024, 1024, 1024),
        n_channels: int = 256,
        network_factory: Callable | None = None,
        *,
        mask: Mask = "half",
        parity: int = 0,
    ):
        _set_fields(
            self, "ConditionedCoupling", kind, hidden_layer_sizes, n_channels, network_factory, mask, parity
        )
        self.cond_shape = None
        self.network = None

    def init(self, x_batch, *, key, cond=None):
        shape = tuple(x_batch.shape[1:])
        if not jax.tree.leaves(cond):
            raise ValueError(
                "ConditionedCoupling is conditional: pass the batched conditioning to "
                "`nux_eqx.init(flow, x_batch, key=key, cond=cond_batch)`."
            )
        if len(shape) in (1, 3):
            cond0 = jax.tree.map(lambda a: jnp.zeros(jnp.shape(a)[1:], x_batch.dtype), cond)
            feats = jax.eval_shape(lambda c: cond_features(c, shape), cond0)
            n_cond = feats.shape[-1]
        else:
            n_cond = 0  # rejected by _shapes
        in_shape, out_shape = _shapes("ConditionedCoupling", self, shape, n_cond)
        net = _build_network("ConditionedCoupling", self, in_shape, out_shape, x_batch.dtype, key)
        new = eqx.tree_at(lambda s: s.network, self, net, is_leaf=lambda v: v is None)
        # `cond_shape` is static metadata: set it on the copy `tree_at` returned.
        object.__setattr__(new, "cond_shape", _cond_shapes(cond, batched=True))
        return new

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        got = _cond_shapes(cond, batched=False)
        if got != self.cond_shape:
            raise ShapeError(
                f"ConditionedCoupling was initialised with cond leaves of shapes {self.cond_shape} "
                f"(one example), but got {got}; pass the same conditioning structure, one example "
                "per call (batch it with jax.vmap alongside x)."
            )
        return _couple(self, x, reverse, cond_features(cond, x.shape))
