"""nux_eqx: normalizing flows for JAX, built on Equinox.

Every flow is an immutable `eqx.Module` acting on ONE example; batch with `jax.vmap`.
"""

import importlib.metadata

from . import bijective as bijective
from . import models as models
from . import nn as nn
from . import priors as priors
from . import surjective as surjective
from ._containers import (
    ChainRule as ChainRule,
)
from ._containers import (
    ChainRuleCond as ChainRuleCond,
)
from ._containers import (
    Factored as Factored,
)
from ._containers import (
    Invert as Invert,
)
from ._containers import (
    Sequential as Sequential,
)
from ._containers import (
    factored as factored,
)
from ._containers import (
    sequential as sequential,
)
from ._flow import (
    AbstractFlow as AbstractFlow,
)
from ._flow import (
    Captured as Captured,
)
from ._flow import (
    NonTrainable as NonTrainable,
)
from ._flow import (
    NotInitialisedError as NotInitialisedError,
)
from ._flow import (
    ShapeError as ShapeError,
)
from ._flow import (
    capture as capture,
)
from ._flow import (
    init as init,
)
from ._flow import (
    log_prob as log_prob,
)
from ._flow import (
    sample as sample,
)
from ._flow import (
    trainable as trainable,
)
from ._serialise import CheckpointError as CheckpointError
from ._serialise import load as load
from ._serialise import save as save
from .bijective import (
    ActNorm as ActNorm,
)
from .bijective import (
    Coupling as Coupling,
)
from .bijective import (
    Flatten as Flatten,
)
from .bijective import (
    Identity as Identity,
)
from .bijective import (
    LeakyReLU as LeakyReLU,
)
from .bijective import (
    Logit as Logit,
)
from .bijective import (
    OneByOneConv as OneByOneConv,
)
from .bijective import (
    OnebyOneConv as OnebyOneConv,
)
from .bijective import (
    Reshape as Reshape,
)
from .bijective import (
    Reverse as Reverse,
)
from .bijective import (
    Scale as Scale,
)
from .bijective import (
    Sigmoid as Sigmoid,
)
from .bijective import (
    Squeeze as Squeeze,
)
from .bijective import (
    Transpose as Transpose,
)
from .bijective import (
    UnSqueeze as UnSqueeze,
)
from .models import GlowBlock as GlowBlock
from .models import MultiscaleGlow as MultiscaleGlow
from .models import multi_scale as multi_scale
from .priors import (
    AffineGaussianPriorDiagCov as AffineGaussianPriorDiagCov,
)
from .priors import (
    ConditionalGaussianPrior as ConditionalGaussianPrior,
)
from .priors import (
    UnitGaussianPrior as UnitGaussianPrior,
)
from .surjective import UniformDequantization as UniformDequantization

try:
    __version__ = importlib.metadata.version("nux_eqx")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = sorted(
    name
    for name, value in list(globals().items())
    if not name.startswith("_")
    and name not in {"importlib", "annotations"}
    and getattr(value, "__module__", "nux_eqx").startswith("nux_eqx")
)
