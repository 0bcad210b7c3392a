"""Bijective layers."""

from ..nn import MADE as MADE
from ..nn import made_masks as made_masks
from ..nn import made_ordering as made_ordering
from ._autoregressive import MAF as MAF
from ._autoregressive import ConditionalMAF as ConditionalMAF
from ._autoregressive import ConditionalMaskedAutoregressiveSpline as ConditionalMaskedAutoregressiveSpline
from ._autoregressive import MaskedAutoregressive as MaskedAutoregressive
from ._autoregressive import MaskedAutoregressiveSpline as MaskedAutoregressiveSpline
from ._bnaf import BNAF as BNAF
from ._bnaf import BlockAutoregressiveNetwork as BlockAutoregressiveNetwork
from ._circular import CircularRationalQuadraticSpline as CircularRationalQuadraticSpline
from ._circular import circular_rational_quadratic_spline as circular_rational_quadratic_spline
from ._continuous import ContinuousFlow as ContinuousFlow
from ._continuous import TimeMLP as TimeMLP
from ._conv import OneByOneConv as OneByOneConv
from ._conv import OnebyOneConv as OnebyOneConv
from ._conv_linear import CircularConv as CircularConv
from ._conv_linear import LocalDense as LocalDense
from ._conv_linear import OneByOneConvLDU as OneByOneConvLDU
from ._conv_linear import OnebyOneConvLDU as OnebyOneConvLDU
from ._conv_linear import OneByOneConvLU as OneByOneConvLU
from ._coupling import ConditionedCoupling as ConditionedCoupling
from ._coupling import Coupling as Coupling
from ._coupling import NeuralSpline as NeuralSpline
from ._elementwise import (
    Identity as Identity,
)
from ._elementwise import (
    LeakyReLU as LeakyReLU,
)
from ._elementwise import (
    Logit as Logit,
)
from ._elementwise import (
    Scale as Scale,
)
from ._elementwise import (
    Sigmoid as Sigmoid,
)
from ._linear import Affine as Affine
from ._linear import AffineDense as AffineDense
from ._linear import AffineLDU as AffineLDU
from ._linear import AffineSVD as AffineSVD
from ._linear import Householder as Householder
from ._mixture import LogisticMixtureCDF as LogisticMixtureCDF
from ._mixture import logistic_mixture_logit as logistic_mixture_logit
from ._nonlinear import SoftmaxPP as SoftmaxPP
from ._nonlinear import Softplus as Softplus
from ._nonlinear import Tanh as Tanh
from ._normalization import ActNorm as ActNorm
from ._permute import Permute as Permute
from ._permute import Roll as Roll
from ._permute import permutation as permutation
from ._permute import roll_shift as roll_shift
from ._planar import Planar as Planar
from ._planar import Radial as Radial
from ._reshape import (
    Flatten as Flatten,
)
from ._reshape import (
    Reshape as Reshape,
)
from ._reshape import (
    Reverse as Reverse,
)
from ._reshape import (
    Squeeze as Squeeze,
)
from ._reshape import (
    Transpose as Transpose,
)
from ._reshape import (
    UnSqueeze as UnSqueeze,
)
from ._reshape import (
    squeeze as squeeze,
)
from ._reshape import (
    unsqueeze as unsqueeze,
)
from ._residual import LipschitzNetwork as LipschitzNetwork
from ._residual import LipSwish as LipSwish
from ._residual import ResidualFlow as ResidualFlow
from ._residual import update_spectral_state as update_spectral_state
from ._sigmoidal import DeepSigmoidal as DeepSigmoidal
from ._spline import RationalQuadraticSpline as RationalQuadraticSpline
from ._spline import rational_quadratic_spline as rational_quadratic_spline
from ._spline import spline_from_knots as spline_from_knots
from ._spline import spline_knots as spline_knots
from ._stochastic_logdet import AbstractEstimableFlow as AbstractEstimableFlow
from ._stochastic_logdet import StochasticLogDet as StochasticLogDet
from ._stochastic_logdet import stochastic_log_det as stochastic_log_det
from ._transformers import ElementwiseAffine as ElementwiseAffine
from ._transformers import Shift as Shift
from ._upgrade import load_v1 as load_v1
