"""Surjective (and dequantising) layers."""

from ._dequantize import UniformDequantization as UniformDequantization
from ._inference import Abs as Abs
from ._inference import MaxPool as MaxPool
from ._inference import Slice as Slice
from ._inference import Sort as Sort
from ._stochastic import Padding as Padding
from ._stochastic import VariationalDequantization as VariationalDequantization
