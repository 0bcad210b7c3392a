"""Priors: the latent end of a flow."""

from ._gaussian import (
    AffineGaussianPriorDiagCov as AffineGaussianPriorDiagCov,
)
from ._gaussian import (
    ConditionalGaussianPrior as ConditionalGaussianPrior,
)
from ._gaussian import (
    UnitGaussianPrior as UnitGaussianPrior,
)
from ._gaussian import (
    std_normal_log_prob as std_normal_log_prob,
)
