"""Conditioner networks (channels-last, one example at a time)."""

from .._context import loop_body as loop_body
from ._conditioner import CondSpec as CondSpec
from ._conditioner import DefaultNetwork as DefaultNetwork
from ._conditioner import build_network as build_network
from ._conditioner import read_cond as read_cond
from ._conditioner import record_cond as record_cond
from ._gated import GatedResNet as GatedResNet
from ._gated import GatedResNetFactory as GatedResNetFactory
from ._gated import concat_elu as concat_elu
from ._made import MADE as MADE
from ._made import made_masks as made_masks
from ._made import made_ordering as made_ordering
from ._nets import (
    MLP as MLP,
)
from ._nets import (
    Conv2d as Conv2d,
)
from ._nets import (
    ConvNet as ConvNet,
)
from ._nets import (
    Linear as Linear,
)
from ._nets import (
    cast_floating as cast_floating,
)
from ._nets import (
    cond_features as cond_features,
)
from ._nets import (
    default_network as default_network,
)
from ._spectral import (
    SpectralNorm as SpectralNorm,
)
from ._spectral import (
    spectral_norm as spectral_norm,
)
from ._spectral import (
    update_spectral_norm as update_spectral_norm,
)

__all__ = [
    "GatedResNet",
    "GatedResNetFactory",
    "concat_elu",
    "MADE",
    "made_masks",
    "made_ordering",
    "CondSpec",
    "DefaultNetwork",
    "build_network",
    "read_cond",
    "record_cond",
    "Conv2d",
    "ConvNet",
    "Linear",
    "MLP",
    "SpectralNorm",
    "cast_floating",
    "cond_features",
    "default_network",
    "loop_body",
    "spectral_norm",
    "update_spectral_norm",
]
