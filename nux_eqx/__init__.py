"""nux_eqx: normalizing flows for JAX, built on Equinox.

Every flow is an immutable `eqx.Module` acting on ONE example; batch with `jax.vmap`.
"""

import importlib.metadata

from . import bijective as bijective
from . import data as data
from . import injective as injective
from . import models as models
from . import nn as nn
from . import priors as priors
from . import surjective as surjective
from . import train as train
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
from ._context import check_finite as check_finite
from ._flow import AbstractBijection as AbstractBijection
from ._flow import AbstractContainer as AbstractContainer
from ._flow import (
    AbstractFlow as AbstractFlow,
)
from ._flow import AbstractInjective as AbstractInjective
from ._flow import AbstractLayer as AbstractLayer
from ._flow import AbstractPrior as AbstractPrior
from ._flow import AbstractSurjective as AbstractSurjective
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
from ._flow import with_shapes as with_shapes
from ._repeat import Repeat as Repeat
from ._serialise import CheckpointError as CheckpointError
from ._serialise import load as load
from ._serialise import load_run as load_run
from ._serialise import save as save
from .bijective import BNAF as BNAF
from .bijective import MAF as MAF
from .bijective import AbstractEstimableFlow as AbstractEstimableFlow
from .bijective import (
    ActNorm as ActNorm,
)
from .bijective import Affine as Affine
from .bijective import AffineDense as AffineDense
from .bijective import AffineLDU as AffineLDU
from .bijective import AffineSVD as AffineSVD
from .bijective import BlockAutoregressiveNetwork as BlockAutoregressiveNetwork
from .bijective import CircularConv as CircularConv
from .bijective import CircularRationalQuadraticSpline as CircularRationalQuadraticSpline
from .bijective import ConditionalMAF as ConditionalMAF
from .bijective import ConditionalMaskedAutoregressiveSpline as ConditionalMaskedAutoregressiveSpline
from .bijective import (
    ConditionedCoupling as ConditionedCoupling,
)
from .bijective import ContinuousFlow as ContinuousFlow
from .bijective import (
    Coupling as Coupling,
)
from .bijective import DeepSigmoidal as DeepSigmoidal
from .bijective import ElementwiseAffine as ElementwiseAffine
from .bijective import (
    Flatten as Flatten,
)
from .bijective import Householder as Householder
from .bijective import (
    Identity as Identity,
)
from .bijective import (
    LeakyReLU as LeakyReLU,
)
from .bijective import LipschitzNetwork as LipschitzNetwork
from .bijective import LipSwish as LipSwish
from .bijective import LocalDense as LocalDense
from .bijective import LogisticMixtureCDF as LogisticMixtureCDF
from .bijective import (
    Logit as Logit,
)
from .bijective import MaskedAutoregressive as MaskedAutoregressive
from .bijective import MaskedAutoregressiveSpline as MaskedAutoregressiveSpline
from .bijective import NeuralSpline as NeuralSpline
from .bijective import (
    OneByOneConv as OneByOneConv,
)
from .bijective import (
    OnebyOneConv as OnebyOneConv,
)
from .bijective import OneByOneConvLDU as OneByOneConvLDU
from .bijective import OnebyOneConvLDU as OnebyOneConvLDU
from .bijective import OneByOneConvLU as OneByOneConvLU
from .bijective import Permute as Permute
from .bijective import Planar as Planar
from .bijective import Radial as Radial
from .bijective import RationalQuadraticSpline as RationalQuadraticSpline
from .bijective import (
    Reshape as Reshape,
)
from .bijective import ResidualFlow as ResidualFlow
from .bijective import (
    Reverse as Reverse,
)
from .bijective import Roll as Roll
from .bijective import (
    Scale as Scale,
)
from .bijective import Shift as Shift
from .bijective import (
    Sigmoid as Sigmoid,
)
from .bijective import SoftmaxPP as SoftmaxPP
from .bijective import Softplus as Softplus
from .bijective import (
    Squeeze as Squeeze,
)
from .bijective import StochasticLogDet as StochasticLogDet
from .bijective import Tanh as Tanh
from .bijective import TimeMLP as TimeMLP
from .bijective import (
    Transpose as Transpose,
)
from .bijective import (
    UnSqueeze as UnSqueeze,
)
from .bijective import circular_rational_quadratic_spline as circular_rational_quadratic_spline
from .bijective import logistic_mixture_logit as logistic_mixture_logit
from .bijective import rational_quadratic_spline as rational_quadratic_spline
from .bijective import spline_knots as spline_knots
from .bijective import stochastic_log_det as stochastic_log_det
from .bijective import update_spectral_state as update_spectral_state
from .injective import AbstractNoisyInjective as AbstractNoisyInjective
from .injective import CouplingTallAffineDiagCov as CouplingTallAffineDiagCov
from .injective import CouplingUpSample as CouplingUpSample
from .injective import ImportanceWeighted as ImportanceWeighted
from .injective import IWEstimates as IWEstimates
from .injective import NIFTerms as NIFTerms
from .injective import TallAffineDiagCov as TallAffineDiagCov
from .injective import UpSample as UpSample
from .injective import importance_weighted as importance_weighted
from .models import FlowPlusPlus as FlowPlusPlus
from .models import GlowBlock as GlowBlock
from .models import MaskedAutoregressiveFlow as MaskedAutoregressiveFlow
from .models import MultiscaleGlow as MultiscaleGlow
from .models import NeuralSplineFlow as NeuralSplineFlow
from .models import RealNVP as RealNVP
from .models import multi_scale as multi_scale
from .priors import (
    AffineGaussianPriorDiagCov as AffineGaussianPriorDiagCov,
)
from .priors import AffineGaussianPriorFullCov as AffineGaussianPriorFullCov
from .priors import (
    ConditionalGaussianPrior as ConditionalGaussianPrior,
)
from .priors import DiagGaussianPrior as DiagGaussianPrior
from .priors import GMMPrior as GMMPrior
from .priors import LogisticPrior as LogisticPrior
from .priors import MixtureGaussianPrior as MixtureGaussianPrior
from .priors import StudentTPrior as StudentTPrior
from .priors import UniformDirichletPrior as UniformDirichletPrior
from .priors import UniformPrior as UniformPrior
from .priors import (
    UnitGaussianPrior as UnitGaussianPrior,
)
from .surjective import Abs as Abs
from .surjective import MaxPool as MaxPool
from .surjective import Padding as Padding
from .surjective import Slice as Slice
from .surjective import Sort as Sort
from .surjective import UniformDequantization as UniformDequantization
from .surjective import VariationalDequantization as VariationalDequantization

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
