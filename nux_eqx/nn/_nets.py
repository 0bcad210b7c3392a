"""Conditioner networks. Each acts on ONE example and keeps every non-array field static,
so plain `jax.jit` works on flows that hold them."""

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._context import LOOP_BODY


class Linear(eqx.Module):
    """A dense layer `y = W x + b` with static sizes.

    `W` and `b` start uniform on `[-1/sqrt(in_size), 1/sqrt(in_size)]` (the initialisation
    of `eqx.nn.Linear` and PyTorch's). Random biases put the ReLU kinks of a conditioner's
    first layer away from the origin; with zero biases the network starts positively
    homogeneous (`f(a x) = a f(x)` for `a > 0`) and learns markedly slower at first. On the
    7-D galaxy table (five seeds, `benchmarks/results/tabular_bias_5seeds.json` against
    `tabular_5seeds.json`), RealNVP's median validation NLL after 250 steps went from -2.48
    with zero biases to -3.47 (FlowJAX: -3.69), and its test NLL from -5.92 to -6.26.

    **Arguments:**

    - `in_size`, `out_size`: the sizes.
    - `zero_init`: start with `W = 0, b = 0` (so a coupling starts at the identity).
    - `key`: a PRNG key.
    """

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"]

    def __init__(self, in_size: int, out_size: int, *, zero_init: bool = False, key: PRNGKeyArray):
        if zero_init:
            self.weight = jnp.zeros((out_size, in_size))
            self.bias = jnp.zeros((out_size,))
        else:
            lim = 1.0 / math.sqrt(max(in_size, 1))
            self.weight = jr.uniform(key, (out_size, in_size), minval=-lim, maxval=lim)
            self.bias = jr.uniform(jr.fold_in(key, 1), (out_size,), minval=-lim, maxval=lim)

    def __call__(self, x: Float[Array, " in"]) -> Float[Array, " out"]:
        return self.weight @ x + self.bias


class MLP(eqx.Module):
    """A multilayer perceptron on one vector: NuX's default coupling network.

    **Arguments:**

    - `in_size`, `out_size`: input and output sizes.
    - `hidden_layer_sizes`: the widths of the hidden layers (NuX's keyword).
    - `activation`: the hidden activation (a static field; default `jax.nn.relu`).
    - `zero_init`: zero the last layer, so the network starts at 0 (default `True`).
    - `key`: a PRNG key.
    """

    layers: tuple[Linear, ...]
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        hidden_layer_sizes: Sequence[int] = (1024, 1024, 1024, 1024),
        activation: Callable = jax.nn.relu,
        *,
        zero_init: bool = True,
        key: PRNGKeyArray,
    ):
        sizes = (in_size, *hidden_layer_sizes, out_size)
        keys = jr.split(key, len(sizes) - 1)
        self.layers = tuple(
            Linear(a, b, zero_init=zero_init and i == len(sizes) - 2, key=k)
            for i, (a, b, k) in enumerate(zip(sizes[:-1], sizes[1:], keys))
        )
        self.activation = activation

    def __call__(self, x: Float[Array, " in"]) -> Float[Array, " out"]:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


class Conv2d(eqx.Module):
    """A channels-last 2-D convolution with 'SAME' padding, on one `(h, w, c)` image.

    (`eqx.nn.Conv2d` is channels-first; this one matches the flows' layout.)

    **Arguments:**

    - `in_channels`, `out_channels`: channel counts.
    - `kernel_size`: an int or `(kh, kw)`.
    - `zero_init`: start at zero.
    - `key`: a PRNG key.
    """

    weight: Float[Array, "kh kw cin cout"]
    bias: Float[Array, " cout"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        *,
        zero_init: bool = False,
        key: PRNGKeyArray,
    ):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        shape = (kh, kw, in_channels, out_channels)
        if zero_init:
            self.weight = jnp.zeros(shape)
        else:
            lim = 1.0 / math.sqrt(kh * kw * in_channels)
            self.weight = jr.uniform(key, shape, minval=-lim, maxval=lim)
        self.bias = jnp.zeros((out_channels,))

    def __call__(self, x: Float[Array, "h w cin"]) -> Float[Array, "h w cout"]:
        return conv_same(x, self.weight) + self.bias


def conv_same(x: Array, w: Array) -> Array:
    """The stride-1 'SAME' convolution of one channels-last `(h, w, cin)` image with an HWIO
    kernel; inside [`nux_eqx.nn.loop_body`][] on CPU, as a matmul over patches (the same
    convolution; XLA:CPU's convolution weight gradient is ~100x slower inside a loop)."""
    if LOOP_BODY.get() and jax.default_backend() == "cpu":
        return _conv_im2col(x, w)
    return jax.lax.conv_general_dilated(
        x[None], w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )[0]


def _conv_im2col(x: Array, w: Array) -> Array:
    """The 'SAME' convolution of one `(h, w, cin)` image as `patches @ W`."""
    kh, kw, cin, cout = w.shape
    if kh == kw == 1:
        return x @ w[0, 0]
    h, wd = x.shape[:2]
    xp = jnp.pad(x, ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0)))
    patches = jnp.concatenate([xp[i : i + h, j : j + wd] for i in range(kh) for j in range(kw)], axis=-1)
    return patches @ w.reshape(kh * kw * cin, cout)


class ConvNet(eqx.Module):
    """NuX's image conditioner: 3x3 conv -> 1x1 conv -> zero-initialised 3x3 conv.

    Channels-last, on one `(h, w, c)` image.

    **Arguments:**

    - `in_channels`, `out_channels`: channel counts.
    - `n_channels`: the hidden width (NuX's keyword).
    - `activation`: the hidden activation (static; default `jax.nn.relu`).
    - `zero_init`: zero the last convolution (default `True`).
    - `key`: a PRNG key.
    """

    convs: tuple[Conv2d, Conv2d, Conv2d]
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_channels: int = 256,
        activation: Callable = jax.nn.relu,
        *,
        zero_init: bool = True,
        key: PRNGKeyArray,
    ):
        k1, k2, k3 = jr.split(key, 3)
        self.convs = (
            Conv2d(in_channels, n_channels, 3, key=k1),
            Conv2d(n_channels, n_channels, 1, key=k2),
            Conv2d(n_channels, out_channels, 3, zero_init=zero_init, key=k3),
        )
        self.activation = activation

    def __call__(self, x: Float[Array, "h w cin"]) -> Float[Array, "h w cout"]:
        x = self.activation(self.convs[0](x))
        x = self.activation(self.convs[1](x))
        return self.convs[2](x)


def default_network(
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    *,
    key: PRNGKeyArray,
    hidden_layer_sizes: Sequence[int] = (1024, 1024, 1024, 1024),
    n_channels: int = 256,
    zero_init: bool = True,
) -> eqx.Module:
    """Build NuX's default conditioner for the shapes: an `MLP` for vectors, a `ConvNet`
    for `(h, w, c)` images. This is the factory protocol:
    `factory(in_shape, out_shape, *, key) -> module acting on one example`.

    `zero_init` starts the last layer at zero, so the layer built on it starts at the
    identity (splines need it for that); `Coupling` passes `False` for vectors, as NuX's
    `SimpleMLP` (a zero last layer also stalls the hidden layers' first updates: on the
    galaxy table an 8-coupling RealNVP reached test NLL -5.83 in 3000 steps with it and
    -6.28 without; FlowJAX -6.31)."""
    if len(in_shape) == 1 and len(out_shape) == 1:
        return MLP(in_shape[0], out_shape[0], tuple(hidden_layer_sizes), zero_init=zero_init, key=key)
    if len(in_shape) == 3 and len(out_shape) == 3:
        return ConvNet(in_shape[-1], out_shape[-1], n_channels, zero_init=zero_init, key=key)
    raise ValueError(
        f"No default network maps {in_shape} to {out_shape}: vectors and (h, w, c) images are "
        "supported. Pass your own `network_factory(in_shape, out_shape, *, key)`."
    )


def cast_floating(tree: PyTree, dtype) -> PyTree:
    """Cast every floating array leaf of `tree` to `dtype` (parameters follow the data)."""
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)


LABEL_KEY = "label"
"""The dict entry of a `cond` that holds class labels: read by the label-reading priors
([`nux_eqx.GMMPrior`][]), never by conditional layers (see [`cond_features`][])."""


def _is_label(path) -> bool:
    return any(isinstance(k, jax.tree_util.DictKey) and k.key == LABEL_KEY for k in path)


def cond_features(cond: PyTree, like: tuple[int, ...]) -> Array | None:
    """Turn a conditioning pytree into one array a network can read next to an example.

    For a vector example (`like` of rank 1) every leaf is flattened and concatenated. For
    an image example `(h, w, c)`, leaves of shape `(h, w, k)` are concatenated along
    channels and other leaves are flattened and broadcast over the pixels. A
    [`nux_eqx.ChainRuleCond`][] contributes its `x_a` and outer `cond`. `None` gives
    `None`.

    **Class labels are left out:** the entry `"label"` of a dict (at any depth, e.g.
    `cond={"label": y, "c": c}`) is reserved for the class labels of the label-reading
    priors ([`nux_eqx.GMMPrior`][]), so every conditional layer, which reads `cond`
    through this function, sees only the rest (`c`). To condition the layers on the
    class too, pass it again under another name (e.g. one-hot as `"onehot"`); name other
    conditioning anything but `"label"`.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(cond)
    leaves = [jnp.asarray(leaf) for path, leaf in flat if not _is_label(path)]
    if not leaves:
        return None
    if len(like) == 1:
        return jnp.concatenate([leaf.reshape(-1) for leaf in leaves])
    if len(like) == 3:
        h, w = like[0], like[1]
        parts = []
        for leaf in leaves:
            if leaf.ndim == 3 and leaf.shape[:2] == (h, w):
                parts.append(leaf)
            else:
                v = leaf.reshape(-1)
                parts.append(jnp.broadcast_to(v, (h, w, v.shape[0])))
        return jnp.concatenate(parts, axis=-1)
    raise ValueError(f"conditioning is supported for vector and (h, w, c) examples, not {like}.")
