"""Multiscale builders: `multi_scale`, `GlowBlock`, `MultiscaleGlow`."""

from typing import Literal

from .._containers import ChainRule, Factored, Sequential
from .._flow import AbstractFlow
from .._repeat import Repeat
from ..bijective import ActNorm, Coupling, Identity, Logit, OneByOneConv, Squeeze, UnSqueeze
from ..priors import ConditionalGaussianPrior, UnitGaussianPrior
from ..surjective import UniformDequantization, VariationalDequantization


def _builder(fn):
    fn.__nux_builder__ = True
    return fn


@_builder
def multi_scale(flow: AbstractFlow, inner: AbstractFlow) -> Sequential:
    """NuX's `multi_scale`, as the seed README writes it.

    `Sequential(flow, Squeeze(), Factored(inner, Identity()), UnSqueeze())`: run `flow`,
    squeeze, send half of the channels through `inner` and pass the other half through
    unchanged, then unsqueeze, so the output has the input's shape and the outer prior
    scores every dimension.

    **Arguments:**

    - `flow`: the flow at this scale (e.g. a stack of `GlowBlock`s).
    - `inner`: the flow at the coarser scales (`Identity()` at the bottom).

    **Returns:** a `Sequential`.
    """
    return Sequential(flow, Squeeze(), Factored(inner, Identity()), UnSqueeze())


@_builder
def GlowBlock(n_channels: int = 512, kind: Literal["affine", "additive"] = "affine") -> Sequential:
    """One step of Glow: `ActNorm -> OneByOneConv -> Coupling`.

    **Arguments:**

    - `n_channels`: the hidden width of the coupling's conv network.
    - `kind`: the coupling kind, `"affine"` or `"additive"`.

    **Returns:** a `Sequential`.
    """
    return Sequential(ActNorm(), OneByOneConv(), Coupling(kind=kind, n_channels=n_channels))


@_builder
def MultiscaleGlow(
    n_levels: int = 2,
    n_blocks: int = 4,
    n_channels: int = 64,
    *,
    factor_out: Literal["prior", "chain_rule", "none"] = "prior",
    dequantize: float | None = None,
    dequantization: Literal["uniform", "variational"] = "uniform",
    lmbda: float = 0.05,
    kind: Literal["affine", "additive"] = "affine",
    repeat: bool = False,
) -> Sequential:
    """A multiscale Glow for `(h, w, c)` images (Kingma & Dhariwal 2018).

    Each level squeezes (`(h, w, c) -> (h/2, w/2, 4c)`) and runs `n_blocks` `GlowBlock`s;
    every level but the last then splits its channels in two: the first half goes on to
    the next level and the second half is factored out.

    **Arguments:**

    - `n_levels`: the number of scales; `h` and `w` must be divisible by `2**n_levels`.
    - `n_blocks`: Glow steps per level (K).
    - `n_channels`: hidden width of each coupling's conv network.
    - `factor_out`: what scores the factored-out half: `"prior"` (a `UnitGaussianPrior`,
      as normflows' Glow), `"chain_rule"` (Glow's learned `ConditionalGaussianPrior` given
      the kept half, through `ChainRule`), or `"none"` (NuX's `multi_scale` nesting: nothing
      is factored out; one `UnitGaussianPrior` scores everything at the end).
    - `dequantize`: if given, the data are integer levels `0 .. dequantize - 1`; the flow
      starts with `UniformDequantization(scale=dequantize)` and `Logit(lmbda)`, and its
      log-likelihood is that of the discrete data (a lower bound).
    - `dequantization`: `"uniform"` (default) or `"variational"`: Flow++'s
      `VariationalDequantization(scale=dequantize)` with its default learned logit-normal
      noise `q(u | x)` (width `n_channels // 2`), a tighter bound for a little more work
      per step (measured on the digits in the [performance page](../performance.md)).
    - `lmbda`: the `Logit` squeeze when dequantising (`Logit` maps `[0, 1]` to
      `[lmbda, 1 - lmbda]` first). Data with few levels favour a small value (the
      [performance page](../performance.md) compares them on the 17-level digits).
    - `kind`: the couplings' kind.
    - `repeat`: wrap each level's `n_blocks` Glow steps in `Repeat(GlowBlock(...), n_blocks)`
      (one `lax.scan` over stacked parameters), so compile time does not grow with
      `n_blocks`. The default `False` unrolls them in a `Sequential`. On XLA:CPU a
      scanned convolution's weight gradient is slow, so training steps run ~10x slower
      (see `Repeat`); use it there for deep stacks where compile time dominates.

    **Returns:** an un-initialised `Sequential`; call `nux_eqx.init` on a batch.

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        # integer images of 17 levels, (batch, h, w, c) = (8, 4, 4, 1)
        x = jax.random.randint(jax.random.key(0), (8, 4, 4, 1), 0, 17).astype("float32")
        glow = nux.MultiscaleGlow(n_levels=1, n_blocks=1, n_channels=4, dequantize=17)
        glow = nux.init(glow, x, key=jax.random.key(1))
        log_px = nux.log_prob(glow, x[0], key=jax.random.key(2))   # dequantisation needs a key
        print(glow.in_shape, log_px.shape)                          # (4, 4, 1) ()
        bits_per_dim = nux.train.bits_per_dim(-log_px, glow.in_shape)
        ```
    """
    if n_levels < 1 or n_blocks < 1:
        raise ValueError(f"MultiscaleGlow: n_levels and n_blocks must be >= 1, got {n_levels}, {n_blocks}.")
    if dequantization not in ("uniform", "variational"):
        raise ValueError(
            f"MultiscaleGlow: dequantization must be 'uniform' or 'variational', got {dequantization!r}."
        )
    if factor_out not in ("prior", "chain_rule", "none"):
        raise ValueError(
            f"MultiscaleGlow: factor_out must be 'prior', 'chain_rule' or 'none', got {factor_out!r}."
        )

    def blocks():
        if repeat:
            return [Repeat(GlowBlock(n_channels, kind), n_blocks)]
        return [GlowBlock(n_channels, kind) for _ in range(n_blocks)]

    if factor_out == "none":
        # The seed README's nesting: squeeze once (so channels split), then
        # multi_scale(blocks, multi_scale(blocks, ... blocks)), one prior on everything.
        trunk: AbstractFlow = Sequential(*blocks())
        for _ in range(n_levels - 1):
            trunk = multi_scale(Sequential(*blocks()), trunk)
        body = Sequential(Squeeze(), trunk, UnitGaussianPrior())
    else:
        # Each level maps (h, w, c) to (h, w, c): it unsqueezes at its end so the parent
        # can concatenate it with the half it factored out.
        def level(i: int) -> Sequential:
            if i == n_levels - 1:
                return Sequential(Squeeze(), *blocks(), UnSqueeze(), UnitGaussianPrior())
            if factor_out == "prior":
                tail = Factored(level(i + 1), UnitGaussianPrior())
            else:
                tail = ChainRule(level(i + 1), ConditionalGaussianPrior(n_channels=n_channels))
            return Sequential(Squeeze(), *blocks(), tail, UnSqueeze())

        body = level(0)
    if dequantize is None:
        return body
    if dequantization == "variational":
        deq: AbstractFlow = VariationalDequantization(scale=dequantize, n_channels=max(1, n_channels // 2))
    else:
        deq = UniformDequantization(scale=dequantize)
    return Sequential(deq, Logit(lmbda), body)
