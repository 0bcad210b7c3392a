"""Ready-made architectures: functions that return un-initialised flows."""

from ._flowpp import FlowPlusPlus as FlowPlusPlus
from ._glow import GlowBlock as GlowBlock
from ._glow import MultiscaleGlow as MultiscaleGlow
from ._glow import multi_scale as multi_scale
from ._vector import MaskedAutoregressiveFlow as MaskedAutoregressiveFlow
from ._vector import NeuralSplineFlow as NeuralSplineFlow
from ._vector import RealNVP as RealNVP
