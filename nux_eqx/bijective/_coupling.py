"""`Coupling`: RealNVP's affine / additive coupling for vectors and images."""

from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from .._flow import AbstractFlow, ShapeError
from .._types import AnyShape, Cond, Key, Scalar
from ..nn import cast_floating, default_network


class Coupling(AbstractFlow):
    """RealNVP coupling (NuX's `Coupling`), for vectors `(d,)` and images `(h, w, c)`.

    The last axis is split into `x_a` (the first `floor(d/2)` features / channels) and
    `x_b`. A network of `x_b` gives `t` (and `log_s`); then
    `z_a = (x_a - t) * exp(-log_s)` with `log_s = tanh(.)` (affine) or `z_a = x_a - t`
    (additive), and `z_b = x_b`. The contribution is `-sum(log_s)`.

    Pair it with `Reverse()` (vectors) or `OneByOneConv()` (images) so every feature gets
    transformed.

    **Arguments:**

    - `kind`: `"affine"` (default) or `"additive"`.
    - `hidden_layer_sizes`: widths of the default `nux_eqx.nn.MLP` (vectors).
    - `n_channels`: hidden width of the default `nux_eqx.nn.ConvNet` (images).
    - `network_factory`: optional `factory(in_shape, out_shape, *, key) -> module` that
      builds the conditioner for one example; the output is `(.., 2 * d_a)` for affine
      (`t` then the pre-tanh `log_s`) and `(.., d_a)` for additive.
    """

    network: eqx.Module | None
    kind: Literal["affine", "additive"] = eqx.field(static=True)
    hidden_layer_sizes: tuple[int, ...] = eqx.field(static=True)
    n_channels: int = eqx.field(static=True)
    network_factory: Callable | None = eqx.field(static=True)
    layer_kind: ClassVar[str] = "bijective"

    def __init__(
        self,
        kind: Literal["affine", "additive"] = "affine",
        hidden_layer_sizes: Sequence[int] = (1024, 1024, 1024, 1024),
        n_channels: int = 256,
        network_factory: Callable | None = None,
    ):
        if kind not in ("affine", "additive"):
            raise ValueError(f"Coupling: kind must be 'affine' or 'additive', got {kind!r}.")
        self.kind = kind
        self.hidden_layer_sizes = tuple(int(h) for h in hidden_layer_sizes)
        self.n_channels = int(n_channels)
        self.network_factory = network_factory
        self.network = None

    def _sizes(self, d: int) -> tuple[int, int]:
        return d // 2, d - d // 2

    def init(self, x_batch, *, key, cond=None):
        shape = tuple(x_batch.shape[1:])
        if len(shape) not in (1, 3):
            raise ShapeError(
                f"Coupling takes vectors (d,) or images (h, w, c), got examples of shape {shape}."
            )
        d_a, d_b = self._sizes(shape[-1])
        if d_a == 0:
            raise ShapeError(
                f"Coupling needs at least 2 features on the last axis to split, got shape {shape}; "
                "for 1-channel images apply `Squeeze()` first."
            )
        in_shape = (*shape[:-1], d_b)
        out_shape = (*shape[:-1], d_a * (2 if self.kind == "affine" else 1))
        if self.network_factory is None:
            net = default_network(
                in_shape,
                out_shape,
                key=key,
                hidden_layer_sizes=self.hidden_layer_sizes,
                n_channels=self.n_channels,
            )
        else:
            net = self.network_factory(in_shape, out_shape, key=key)
        out = jax.eval_shape(net, jax.ShapeDtypeStruct(in_shape, x_batch.dtype))
        if tuple(out.shape) != out_shape:
            raise ShapeError(f"Coupling: the network maps {in_shape} to {out.shape}, expected {out_shape}.")
        net = cast_floating(net, x_batch.dtype)
        return eqx.tree_at(lambda s: s.network, self, net, is_leaf=lambda v: v is None)

    def transform(self, x: AnyShape, reverse: bool, *, key: Key, cond: Cond) -> tuple[AnyShape, Scalar]:
        d_a, _ = self._sizes(x.shape[-1])
        x_a, x_b = x[..., :d_a], x[..., d_a:]
        h = self.network(x_b)
        if self.kind == "additive":
            z_a = x_a + h if reverse else x_a - h
            return jnp.concatenate([z_a, x_b], axis=-1), jnp.zeros((), x.dtype)
        t, log_s = h[..., :d_a], jnp.tanh(h[..., d_a:])
        z_a = x_a * jnp.exp(log_s) + t if reverse else (x_a - t) * jnp.exp(-log_s)
        return jnp.concatenate([z_a, x_b], axis=-1), -jnp.sum(log_s)
