"""The conditioner path of the coupling and autoregressive layers: the default network
factory, the one function that builds a layer's network from a factory, and the record of
a `cond`'s structure that a conditional layer checks at every call."""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._flow import ShapeError
from ._nets import cast_floating, cond_features, default_network


@dataclasses.dataclass(frozen=True, repr=False)
class DefaultNetwork:
    """NuX's default conditioner factory: an [`nux_eqx.nn.MLP`][] for vectors, a
    [`nux_eqx.nn.ConvNet`][] for `(h, w, c)` images (see [`nux_eqx.nn.default_network`][]).

    A layer builds one from its `hidden_layer_sizes` and `n_channels` keywords; once the
    layer is initialised it keeps only the setting that applies to its data, so its repr
    shows what it uses. Immutable and hashable (it is a layer's static field), and stored
    in checkpoints by its fields.

    **Arguments:**

    - `hidden_layer_sizes`: the MLP's hidden widths (vectors).
    - `n_channels`: the ConvNet's hidden width (images).
    - `zero_init`: start the last layer at zero (the layer then starts at its
      transformer's initial map). `None` (default): NuX's choice, a randomly initialised
      MLP (its `SimpleMLP`: a zero last layer stalls training) and a zero last convolution.
    """

    hidden_layer_sizes: tuple[int, ...] | None = (1024, 1024, 1024, 1024)
    n_channels: int | None = 256
    zero_init: bool | None = None

    def __post_init__(self):
        h = self.hidden_layer_sizes
        if h is not None:
            h = tuple(int(v) for v in h)
            if any(v < 1 for v in h):
                raise ValueError(f"hidden_layer_sizes must be positive integers, got {h}.")
            object.__setattr__(self, "hidden_layer_sizes", h)
        if self.n_channels is not None:
            object.__setattr__(self, "n_channels", int(self.n_channels))

    def _key(self):
        return (self.hidden_layer_sizes, self.n_channels, self.zero_init)

    def __repr__(self) -> str:
        names = ("hidden_layer_sizes", "n_channels", "zero_init")
        parts = [f"{n}={v!r}" for n, v in zip(names, self._key()) if v is not None]
        return f"DefaultNetwork({', '.join(parts)})"

    def __pdoc__(self, **kwargs):
        # equinox prints dataclasses field by field (hiding only defaults); show the
        # settings that apply, as `repr` does
        import wadler_lindig as wl

        return wl.TextDoc(repr(self))

    def __call__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], *, key: PRNGKeyArray):
        image = len(in_shape) == 3
        zero = image if self.zero_init is None else self.zero_init
        kw = {"n_channels": self.n_channels} if image else {"hidden_layer_sizes": self.hidden_layer_sizes}
        return default_network(in_shape, out_shape, key=key, zero_init=zero, **kw)

    def for_shape(self, in_shape: tuple[int, ...]) -> "DefaultNetwork":
        """This factory with only the setting used for inputs of `in_shape`."""
        if len(in_shape) == 3:
            return DefaultNetwork(None, self.n_channels, self.zero_init)
        return DefaultNetwork(self.hidden_layer_sizes, None, self.zero_init)


def build_network(
    owner: str,
    factory: Callable,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    *,
    dtype,
    key: PRNGKeyArray,
):
    """Build a layer's conditioner: `factory(in_shape, out_shape, key=key)`, checked to map
    one `in_shape` example to `out_shape`, with its floating parameters cast to `dtype`.

    Raises `ShapeError` naming `owner` when the network's output has another shape."""
    net = factory(tuple(in_shape), tuple(out_shape), key=key)
    out = jax.eval_shape(net, jax.ShapeDtypeStruct(tuple(in_shape), dtype))
    if tuple(getattr(out, "shape", ())) != tuple(out_shape):
        raise ShapeError(
            f"{owner}: the network maps {tuple(in_shape)} to {getattr(out, 'shape', out)}, expected {tuple(out_shape)}."
        )
    return cast_floating(net, dtype)


@dataclasses.dataclass(frozen=True)
class CondSpec:
    """The structure of one example's conditioning, recorded by a conditional layer's
    `init`: the pytree structure and the shape of every leaf. The layer checks each call's
    `cond` against it, so a dict in place of an array, or a leaf of another shape, is an
    error rather than a silently different network input.

    **Arguments:**

    - `treedef`: the pytree structure of `cond`.
    - `shapes`: the unbatched shape of each leaf.
    """

    treedef: jax.tree_util.PyTreeDef
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, cond: PyTree, *, batched: bool) -> "CondSpec":
        """The spec of `cond` (with one leading batch axis on every leaf when `batched`)."""
        leaves, treedef = jax.tree.flatten(cond)
        return cls(treedef, tuple(tuple(jnp.shape(a)[1:] if batched else jnp.shape(a)) for a in leaves))

    def check(self, owner: str, cond: PyTree) -> None:
        """Raise `ShapeError` unless `cond` (one example) has this structure and these shapes."""
        got = CondSpec.of(cond, batched=False)
        if got != self:
            raise ShapeError(
                f"{owner} was initialised with cond leaves of shapes {self.shapes} (structure "
                f"{self.treedef}, one example), but got {got.shapes} (structure {got.treedef}); pass "
                "the same conditioning structure, one example per call (batch it with jax.vmap "
                "alongside x)."
            )

    def n_features(self, like: tuple[int, ...]) -> int:
        """The size of `nux_eqx.nn.cond_features`'s last axis for examples shaped `like`."""
        cond0 = jax.tree.unflatten(self.treedef, [jax.ShapeDtypeStruct(s, jnp.float32) for s in self.shapes])
        return int(jax.eval_shape(lambda c: cond_features(c, like), cond0).shape[-1])


def record_cond(owner: str, conditional: bool | None, cond_batch: PyTree) -> CondSpec | None:
    """At `init`: the `CondSpec` of a batched `cond`, or `None` when the layer does not read
    one (`conditional=False`, or `None` and no `cond` given). `conditional=True` without a
    `cond` is an error."""
    if conditional is False:
        return None
    if not jax.tree.leaves(cond_batch):
        if conditional:
            raise ValueError(
                f"{owner} is conditional: pass the batched conditioning to "
                "`nux_eqx.init(flow, x_batch, key=key, cond=cond_batch)` (and `cond=` at every call)."
            )
        return None
    return CondSpec.of(cond_batch, batched=True)


def read_cond(
    owner: str, spec: CondSpec | None, conditional: bool | None, cond: PyTree, like: tuple[int, ...], dtype
) -> Array | None:
    """At a call: the network features of `cond` (checked against `spec`), or `None` for a
    layer that reads no conditioning. A layer initialised without `cond` refuses one
    (unless built with `conditional=False`, which ignores it)."""
    given = bool(jax.tree.leaves(cond))
    if spec is None:
        if given and conditional is None:
            raise ShapeError(
                f"{owner} was initialised without `cond`, so it reads none, but got one. Pass the "
                "batched conditioning to `nux_eqx.init` as well to condition it, or build the "
                "layer with `conditional=False` to ignore `cond`."
            )
        return None
    if not given:
        raise ValueError(f"{owner} is conditional and needs `cond=`; it got none.")
    spec.check(owner, cond)
    return cond_features(cond, like).astype(dtype)
