"""Conditioner networks (channels-last, one example at a time)."""

from ._conditioner import CondSpec as CondSpec
from ._conditioner import DefaultNetwork as DefaultNetwork
from ._conditioner import build_network as build_network
from ._conditioner import read_cond as read_cond
from ._conditioner import record_cond as record_cond
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
from ._nets import (
    loop_body as loop_body,
)

__all__ = [
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
    "cast_floating",
    "cond_features",
    "default_network",
    "loop_body",
]

from ._gated import GatedResNet as GatedResNet  # noqa: E402
from ._gated import GatedResNetFactory as GatedResNetFactory  # noqa: E402
from ._gated import concat_elu as concat_elu  # noqa: E402

__all__ += ["GatedResNet", "GatedResNetFactory", "concat_elu"]
