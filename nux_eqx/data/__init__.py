"""Bundled datasets (no downloads)."""

from ._datasets import DIGITS_LEVELS as DIGITS_LEVELS
from ._datasets import Split as Split
from ._datasets import digits as digits
