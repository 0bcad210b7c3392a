"""Registry cases: image layers, factoring containers, dequantisation and the priors of the
images issue."""

import jax.random as jr
from cases import Case

import nux_eqx as nux

CASES = {
    "ActNorm-image": Case(lambda: nux.ActNorm(), "image", covers=("ActNorm",)),
    "Squeeze": Case(lambda: nux.Squeeze(), "image"),
    "UnSqueeze": Case(lambda: nux.UnSqueeze(), lambda k: jr.normal(k, (6, 2, 2, 8))),
    "OneByOneConv": Case(lambda: nux.OneByOneConv(), "image", covers=("OneByOneConv", "OnebyOneConv")),
    "OneByOneConv-identity": Case(
        lambda: nux.OneByOneConv(init="identity"), "image", covers=("OneByOneConv",)
    ),
    "Coupling-image": Case(
        lambda: nux.Coupling(n_channels=8), lambda k: jr.normal(k, (6, 4, 4, 3)), covers=("Coupling",)
    ),
    "Coupling-image-additive": Case(
        lambda: nux.Coupling(kind="additive", n_channels=8), "image", covers=("Coupling",)
    ),
    "Factored": Case(
        lambda: nux.Factored(nux.Sequential(nux.ActNorm(), nux.UnitGaussianPrior()), nux.UnitGaussianPrior()),
        "image",
        covers=("Factored", "factored"),
    ),
    "Factored-indices": Case(
        lambda: nux.Factored(
            nux.Coupling(hidden_layer_sizes=(8,)), nux.Identity(), nux.LeakyReLU(0.5), split=(2, 3)
        ),
        lambda k: jr.normal(k, (6, 5)),
        covers=("Factored",),
    ),
    "ChainRule": Case(
        lambda: nux.ChainRule(
            nux.Sequential(nux.Coupling(n_channels=8), nux.UnitGaussianPrior()),
            nux.ConditionalGaussianPrior(n_channels=8),
        ),
        lambda k: jr.normal(k, (6, 2, 2, 4)),
        covers=("ChainRule", "ConditionalGaussianPrior"),
    ),
    "ChainRule-vector": Case(
        lambda: nux.ChainRule(nux.UnitGaussianPrior(), nux.ConditionalGaussianPrior(hidden_layer_sizes=(8,))),
        covers=("ChainRule", "ConditionalGaussianPrior"),
    ),
    "ConditionalGaussianPrior-2d": Case(
        lambda: nux.ChainRule(
            nux.UnitGaussianPrior(), nux.ConditionalGaussianPrior(hidden_layer_sizes=(8,)), split=(2,)
        ),
        lambda k: jr.normal(k, (6, 4)),
        covers=("ConditionalGaussianPrior",),
    ),
    "UniformDequantization": Case(lambda: nux.UniformDequantization(scale=17.0), "levels_image"),
    "AffineGaussianPriorDiagCov": Case(lambda: nux.AffineGaussianPriorDiagCov(out_dim=2)),
    "AffineGaussianPriorDiagCov-2d": Case(
        lambda: nux.AffineGaussianPriorDiagCov(out_dim=1),
        lambda k: jr.normal(k, (6, 2)),
        covers=("AffineGaussianPriorDiagCov",),
    ),
    "multi_scale": Case(
        lambda: nux.Sequential(
            nux.multi_scale(
                nux.Sequential(nux.ActNorm(), nux.OneByOneConv(), nux.Coupling(n_channels=8)), nux.Identity()
            ),
            nux.UnitGaussianPrior(),
        ),
        "image",
        covers=("multi_scale",),
    ),
    "MultiscaleGlow": Case(
        lambda: nux.MultiscaleGlow(n_levels=2, n_blocks=1, n_channels=8),
        lambda k: jr.normal(k, (6, 4, 4, 1)),
        covers=("MultiscaleGlow", "GlowBlock"),
    ),
    "MultiscaleGlow-factor-out": Case(
        lambda: nux.MultiscaleGlow(n_levels=2, n_blocks=1, n_channels=8, factor_out="chain_rule"),
        lambda k: jr.normal(k, (6, 4, 4, 1)),
        covers=("MultiscaleGlow",),
    ),
}
CASES["MultiscaleGlow-none"] = Case(
    lambda: nux.MultiscaleGlow(n_levels=2, n_blocks=1, n_channels=8, factor_out="none"),
    lambda k: jr.normal(k, (6, 4, 4, 1)),
    covers=("MultiscaleGlow",),
)
CASES["MultiscaleGlow-dequantize"] = Case(
    lambda: nux.MultiscaleGlow(n_levels=1, n_blocks=1, n_channels=8, dequantize=17),
    lambda k: jr.randint(k, (6, 2, 2, 1), 0, 17).astype("float32"),
    covers=("MultiscaleGlow",),
)
CASES["MultiscaleGlow-variational"] = Case(
    lambda: nux.MultiscaleGlow(
        n_levels=1,
        n_blocks=1,
        n_channels=8,
        dequantize=17,
        dequantization="variational",
        factor_out="chain_rule",
    ),
    lambda k: jr.randint(k, (6, 2, 2, 1), 0, 17).astype("float32"),
    covers=("MultiscaleGlow",),
)
