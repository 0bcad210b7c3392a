"""Flow++'s gated residual conditioner for images (without its attention)."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._flow import ShapeError
from ._nets import Conv2d


def concat_elu(x: Array) -> Array:
    """`elu([x, -x])` along the last axis (PixelCNN++ / Flow++): doubles the channels."""
    return jax.nn.elu(jnp.concatenate([x, -x], axis=-1))


class _ChannelNorm(eqx.Module):
    """Layer normalisation over the channels of each pixel, with a learned gain and bias."""

    gain: Float[Array, " c"]
    bias: Float[Array, " c"]

    def __init__(self, channels: int):
        self.gain = jnp.ones((channels,))
        self.bias = jnp.zeros((channels,))

    def __call__(self, x):
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * self.gain + self.bias


class GatedResNet(eqx.Module):
    """Flow++'s coupling network (Ho et al. 2019) WITHOUT its self-attention: a stack of
    gated residual blocks on one `(h, w, c)` image, channels-last.

    `x -> 3x3 conv (width n_channels)`, then `n_blocks` times
    `x <- norm(x + gate(conv3x3(concat_elu(conv3x3(concat_elu(x))))))` with
    `gate([a, b]) = a * sigmoid(b)` (the second convolution gives `2 n_channels`
    channels) and `norm` a layer norm over each pixel's channels, then
    `concat_elu -> 3x3 conv` to `out_channels` (zero-initialised by default, so a coupling
    starts at its transformer's initial map). Convolutions are [`nux_eqx.nn.Conv2d`][]
    (im2col inside `Repeat` on CPU). Flow++ also had multi-head attention in each block
    and weight normalisation; neither is here.

    **Arguments:**

    - `in_channels`, `out_channels`: channel counts.
    - `n_channels`: the hidden width (default 64).
    - `n_blocks`: the gated residual blocks (default 2).
    - `zero_init`: zero the last convolution (default `True`).
    - `key`: a PRNG key.
    """

    conv_in: Conv2d
    blocks: tuple[tuple[Conv2d, Conv2d, _ChannelNorm], ...]
    conv_out: Conv2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_channels: int = 64,
        n_blocks: int = 2,
        *,
        zero_init: bool = True,
        key: PRNGKeyArray,
    ):
        keys = jr.split(key, 2 * n_blocks + 2)
        c = n_channels
        self.conv_in = Conv2d(in_channels, c, 3, key=keys[0])
        self.blocks = tuple(
            (
                Conv2d(2 * c, c, 3, key=keys[1 + 2 * i]),
                Conv2d(2 * c, 2 * c, 3, key=keys[2 + 2 * i]),
                _ChannelNorm(c),
            )
            for i in range(n_blocks)
        )
        self.conv_out = Conv2d(2 * c, out_channels, 3, zero_init=zero_init, key=keys[-1])

    def __call__(self, x: Float[Array, "h w cin"]) -> Float[Array, "h w cout"]:
        x = self.conv_in(x)
        for conv1, conv2, norm in self.blocks:
            h = conv2(concat_elu(conv1(concat_elu(x))))
            a, b = jnp.split(h, 2, axis=-1)
            x = norm(x + a * jax.nn.sigmoid(b))
        return self.conv_out(concat_elu(x))


@dataclasses.dataclass(frozen=True)
class GatedResNetFactory:
    """A `network_factory` building a [`nux_eqx.nn.GatedResNet`][] (Flow++'s conditioner
    without attention) for image couplings:
    `Coupling(LogisticMixtureCDF(), mask="checkerboard", network_factory=GatedResNetFactory())`.
    Immutable and hashable (a layer's static field).

    **Arguments:**

    - `n_channels`: the hidden width (default 64).
    - `n_blocks`: the gated residual blocks (default 2).
    - `zero_init`: zero the last convolution (default `True`).
    """

    n_channels: int = 64
    n_blocks: int = 2
    zero_init: bool = True

    def __post_init__(self):
        for name in ("n_channels", "n_blocks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"GatedResNetFactory: {name} must be a positive integer, got {v!r}.")

    def __call__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], *, key: PRNGKeyArray):
        if len(in_shape) != 3 or len(out_shape) != 3:
            raise ShapeError(
                f"GatedResNetFactory builds convolutional networks for (h, w, c) images, got input shape "
                f"{tuple(in_shape)} and output shape {tuple(out_shape)}; for vectors use the default MLP."
            )
        return GatedResNet(
            in_shape[-1], out_shape[-1], self.n_channels, self.n_blocks, zero_init=self.zero_init, key=key
        )
