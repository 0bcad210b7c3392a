"""`FlowPlusPlus`: a Flow++-style multiscale image flow (Ho et al. 2019)."""

from typing import Literal

from .._containers import ChainRule, Factored, Sequential
from .._flow import AbstractFlow
from ..bijective import ActNorm, Coupling, LogisticMixtureCDF, Logit, OneByOneConv, Squeeze, UnSqueeze
from ..nn import GatedResNetFactory
from ..priors import ConditionalGaussianPrior, UnitGaussianPrior
from ..surjective import UniformDequantization, VariationalDequantization


def _builder(fn):
    fn.__nux_builder__ = True
    return fn


@_builder
def FlowPlusPlus(
    n_levels: int = 2,
    n_checkerboard: int = 2,
    n_channel: int = 2,
    n_channels: int = 16,
    n_blocks: int = 1,
    K: int = 4,
    *,
    factor_out: Literal["prior", "chain_rule"] = "prior",
    dequantize: float | None = None,
    dequantization: Literal["uniform", "variational"] = "variational",
    lmbda: float = 0.01,
) -> Sequential:
    """A Flow++-style multiscale flow for `(h, w, c)` images (Ho et al. 2019): couplings
    whose transformer is the logistic-mixture CDF ([`nux_eqx.LogisticMixtureCDF`][]) and
    whose conditioner is a gated residual conv net ([`nux_eqx.nn.GatedResNet`][], Flow++'s
    network without its self-attention), with variational dequantisation.

    Each level runs `n_checkerboard` steps `ActNorm -> Coupling(checkerboard)` (alternating
    parity) at its resolution. Every level but the last then squeezes (`(h, w, c) ->
    (h/2, w/2, 4c)`), runs `n_channel` steps `ActNorm -> OneByOneConv ->
    Coupling(channel)`, passes half the channels to the next level and factors the other
    half out (scored by `N(0, I)`, or by Glow's learned conditional prior with
    `factor_out="chain_rule"`), and unsqueezes. The last level ends in `N(0, I)`. Flow++'s
    CIFAR-10 model used 32 mixture components, 96-channel networks with 10 blocks and
    attention; the defaults here are sized for small images such as sklearn's 8x8 digits
    on a CPU (6 couplings; with 4 checkerboard couplings per level, width 32, 2 blocks and
    K = 8 a training step on digits took 11x the default Glow's).

    **Arguments:**

    - `n_levels`: the scales; `h` and `w` must be divisible by `2**(n_levels - 1)`.
    - `n_checkerboard`: checkerboard couplings per level.
    - `n_channel`: channel couplings after each squeeze.
    - `n_channels`: the conditioners' hidden width.
    - `n_blocks`: gated residual blocks per conditioner.
    - `K`: logistic components per transformed element.
    - `factor_out`: `"prior"` or `"chain_rule"` (see above).
    - `dequantize`: if given, the data are integer levels `0 .. dequantize - 1`; the flow
      starts with dequantisation and `Logit(lmbda)`.
    - `dequantization`: `"variational"` (default, Flow++'s, with
      [`nux_eqx.VariationalDequantization`][]'s default logit-normal `q(u | x)`) or
      `"uniform"`.
    - `lmbda`: the `Logit` squeeze when dequantising (default 0.01, for few levels).

    **Returns:** an un-initialised `Sequential`; call `nux_eqx.init` on a batch.
    """
    for name, v in (("n_levels", n_levels), ("n_checkerboard", n_checkerboard), ("K", K)):
        if v < 1:
            raise ValueError(f"FlowPlusPlus: {name} must be >= 1, got {v}.")
    if n_channel < 0:
        raise ValueError(f"FlowPlusPlus: n_channel must be >= 0, got {n_channel}.")
    if factor_out not in ("prior", "chain_rule"):
        raise ValueError(f"FlowPlusPlus: factor_out must be 'prior' or 'chain_rule', got {factor_out!r}.")
    if dequantization not in ("uniform", "variational"):
        raise ValueError(
            f"FlowPlusPlus: dequantization must be 'uniform' or 'variational', got {dequantization!r}."
        )
    net = GatedResNetFactory(n_channels, n_blocks)

    def checkerboard():
        return [
            step
            for j in range(n_checkerboard)
            for step in (
                ActNorm(),
                Coupling(LogisticMixtureCDF(K), mask="checkerboard", parity=j % 2, network_factory=net),
            )
        ]

    def level(i: int) -> Sequential:
        if i == n_levels - 1:
            return Sequential(*checkerboard(), UnitGaussianPrior())
        channel = [
            step
            for _ in range(n_channel)
            for step in (
                ActNorm(),
                OneByOneConv(),
                Coupling(LogisticMixtureCDF(K), mask="channel", network_factory=net),
            )
        ]
        if factor_out == "prior":
            tail = Factored(level(i + 1), UnitGaussianPrior())
        else:
            tail = ChainRule(level(i + 1), ConditionalGaussianPrior(n_channels=n_channels))
        return Sequential(*checkerboard(), Squeeze(), *channel, tail, UnSqueeze())

    body = level(0)
    if dequantize is None:
        return body
    if dequantization == "variational":
        deq: AbstractFlow = VariationalDequantization(scale=dequantize, n_channels=max(1, n_channels // 2))
    else:
        deq = UniformDequantization(scale=dequantize)
    return Sequential(deq, Logit(lmbda), body)
