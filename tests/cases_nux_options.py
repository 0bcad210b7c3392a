"""Registry cases: NuX's early-API options (issue 16): `OneByOneConv(weight_norm=)`,
`LocalDense(dilation=)`, `UniformDequantization(noise_scale=)`, the NIFs' noise scale `s`
and `nn.spectral_norm` conditioners. Their behaviour is tested in
`tests/test_nux_options.py`."""

from cases import Case

import nux_eqx as nux


def _sn(hidden_layer_sizes=(8,), zero_init=False):
    # a hashable factory (a functools.partial compares by identity, so a loaded checkpoint's
    # layer would not equal a freshly built one)
    return nux.nn.spectral_norm(nux.nn.DefaultNetwork(tuple(hidden_layer_sizes), None, zero_init))


CASES = {
    "OneByOneConv-weight_norm": Case(
        lambda: nux.OneByOneConv(weight_norm=True), "image", covers=("OneByOneConv",)
    ),
    "LocalDense-dilation": Case(
        lambda: nux.LocalDense((2, 1), dilation=(2, 2)), "image", covers=("LocalDense",)
    ),
    "UniformDequantization-noise_scale": Case(
        lambda: nux.UniformDequantization(17.0, noise_scale=0.5),
        "levels_image",
        covers=("UniformDequantization",),
    ),
    "TallAffineDiagCov-s": Case(
        lambda: nux.Sequential(nux.TallAffineDiagCov(3, s=0.5), nux.UnitGaussianPrior()),
        covers=("TallAffineDiagCov",),
    ),
    "UpSample-s0": Case(lambda: nux.UpSample(s=0.0), "image", covers=("UpSample",)),
    "Coupling-spectral_norm": Case(
        lambda: nux.Coupling(network_factory=_sn(hidden_layer_sizes=(8,), zero_init=False)),
        covers=("Coupling",),
    ),
    "Coupling-image-spectral_norm": Case(
        lambda: nux.Coupling(
            network_factory=nux.nn.spectral_norm(nux.nn.DefaultNetwork(None, 8, True), scale=0.5)
        ),
        "image",
        covers=("Coupling",),
    ),
}
