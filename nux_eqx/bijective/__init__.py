"""Bijective layers."""

from ._conv import OneByOneConv as OneByOneConv
from ._conv import OnebyOneConv as OnebyOneConv
from ._coupling import Coupling as Coupling
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
from ._normalization import ActNorm as ActNorm
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
