"""Surjective (and dequantising) layers."""

from ._dequantize import UniformDequantization as UniformDequantization
