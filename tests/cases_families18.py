"""Registry cases: the transformers of issue 18 (Flow++'s logistic-mixture CDF, circular
splines), alone and inside `Coupling` (vector and image masks) and `MaskedAutoregressive`,
with and without `cond`; `UniformPrior`; the Flow++ model."""

import math

import jax.random as jr
from cases import BATCH, Case

import nux_eqx as nux

SMALL = dict(hidden_layer_sizes=(8,))


def _cond(key):
    return jr.normal(key, (BATCH, 2))


def _angles(key):
    """(6, 4) angles inside (-pi, pi)."""
    return jr.uniform(key, (BATCH, 4), minval=-3.0, maxval=3.0)


def _angle_image(key):
    return jr.uniform(key, (BATCH, 4, 4, 2), minval=-3.0, maxval=3.0)


def _mix(K=3):
    return nux.LogisticMixtureCDF(K=K)


def _circ(**kw):
    return nux.CircularRationalQuadraticSpline(K=4, **kw)


CASES = {
    # Logistic-mixture CDF (Flow++).
    "LogisticMixtureCDF": Case(lambda: _mix(), "vector"),
    "LogisticMixtureCDF-softplus-image": Case(
        lambda: nux.LogisticMixtureCDF(K=2, scale="softplus"), "image", covers=("LogisticMixtureCDF",)
    ),
    "Coupling-mixture-vector": Case(lambda: nux.Coupling(_mix(), **SMALL), covers=("LogisticMixtureCDF",)),
    "Coupling-mixture-vector-cond": Case(
        lambda: nux.Coupling(_mix(), **SMALL), cond=_cond, covers=("LogisticMixtureCDF",)
    ),
    "Coupling-mixture-checkerboard-gated": Case(
        lambda: nux.Coupling(
            _mix(), mask="checkerboard", network_factory=nux.nn.GatedResNetFactory(n_channels=4, n_blocks=1)
        ),
        lambda k: jr.normal(k, (BATCH, 4, 4, 1)),
        covers=("LogisticMixtureCDF",),
    ),
    "Coupling-mixture-channel-cond": Case(
        lambda: nux.Coupling(_mix(2), mask="channel", n_channels=4),
        "image",
        cond=_cond,
        covers=("LogisticMixtureCDF",),
    ),
    "MaskedAutoregressive-mixture": Case(
        lambda: nux.MaskedAutoregressive(_mix(), (8,)), covers=("LogisticMixtureCDF",)
    ),
    "MaskedAutoregressive-mixture-cond": Case(
        lambda: nux.MaskedAutoregressive(_mix(), (8,)), cond=_cond, covers=("LogisticMixtureCDF",)
    ),
    # Circular splines.
    "CircularRationalQuadraticSpline": Case(lambda: _circ(), _angles),
    "CircularRationalQuadraticSpline-norotation-image": Case(
        lambda: _circ(rotation=False), _angle_image, covers=("CircularRationalQuadraticSpline",)
    ),
    "Coupling-circular-vector": Case(
        lambda: nux.Coupling(_circ(), **SMALL), _angles, covers=("CircularRationalQuadraticSpline",)
    ),
    "Coupling-circular-vector-cond": Case(
        lambda: nux.Coupling(_circ(), **SMALL),
        _angles,
        cond=_cond,
        covers=("CircularRationalQuadraticSpline",),
    ),
    "Coupling-circular-checkerboard-cond": Case(
        lambda: nux.Coupling(_circ(), mask="checkerboard", n_channels=4),
        _angle_image,
        cond=_cond,
        covers=("CircularRationalQuadraticSpline",),
    ),
    "MaskedAutoregressive-circular": Case(
        lambda: nux.MaskedAutoregressive(_circ(), (8,)), _angles, covers=("CircularRationalQuadraticSpline",)
    ),
    "MaskedAutoregressive-circular-cond": Case(
        lambda: nux.MaskedAutoregressive(_circ(), (8,)),
        _angles,
        cond=_cond,
        covers=("CircularRationalQuadraticSpline",),
    ),
    "FlowPlusPlus": Case(
        lambda: nux.FlowPlusPlus(n_checkerboard=1, n_channel=1, n_channels=8, n_blocks=1, K=2, dequantize=17),
        lambda k: jr.randint(k, (BATCH, 4, 4, 1), 0, 17).astype("float32"),
        covers=("FlowPlusPlus", "LogisticMixtureCDF"),
    ),
    "UniformPrior-torus": Case(
        lambda: nux.Sequential(nux.Coupling(_circ(), **SMALL), nux.UniformPrior(-math.pi, math.pi)),
        lambda k: jr.uniform(k, (BATCH, 2), minval=-3.0, maxval=3.0),
        covers=("UniformPrior", "CircularRationalQuadraticSpline"),
    ),
}
