"""Bundled datasets (no downloads)."""

from ._bundled import cities as cities
from ._bundled import fashion_mnist as fashion_mnist
from ._bundled import galaxy as galaxy
from ._bundled import mnist5k as mnist5k
from ._bundled import patches as patches
from ._datasets import DIGITS_LEVELS as DIGITS_LEVELS
from ._datasets import Split as Split
from ._datasets import digits as digits
from ._datasets import standardise as standardise
from ._registry import list_datasets as list_datasets
from ._registry import load as load
from ._toys import toy as toy
from ._toys import toy_log_prob as toy_log_prob
from ._toys import toy_sample as toy_sample
