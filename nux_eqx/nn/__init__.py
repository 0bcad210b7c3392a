"""Conditioner networks (channels-last, one example at a time)."""

from .._context import loop_body as loop_body
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
