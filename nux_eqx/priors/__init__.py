"""Priors: the latent end of a flow."""

from .._maths import std_normal_log_prob as std_normal_log_prob
from ._gaussian import (
    AffineGaussianPriorDiagCov as AffineGaussianPriorDiagCov,
)
from ._gaussian import (
    ConditionalGaussianPrior as ConditionalGaussianPrior,
)
from ._gaussian import (
    UnitGaussianPrior as UnitGaussianPrior,
)
from ._more import AffineGaussianPriorFullCov as AffineGaussianPriorFullCov
from ._more import DiagGaussianPrior as DiagGaussianPrior
from ._more import GMMPrior as GMMPrior
from ._more import LogisticPrior as LogisticPrior
from ._more import MixtureGaussianPrior as MixtureGaussianPrior
from ._more import StudentTPrior as StudentTPrior
from ._more import UniformDirichletPrior as UniformDirichletPrior
from ._uniform import UniformPrior as UniformPrior
