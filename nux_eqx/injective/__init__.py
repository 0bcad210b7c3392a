"""Injective (dimension-changing) layers."""

from ._gaussian_nif import NIFTerms as NIFTerms
from ._importance import ImportanceWeighted as ImportanceWeighted
from ._importance import IWEstimates as IWEstimates
from ._importance import importance_weighted as importance_weighted
from ._nif import AbstractNoisyInjective as AbstractNoisyInjective
from ._nif import CouplingTallAffineDiagCov as CouplingTallAffineDiagCov
from ._nif import TallAffineDiagCov as TallAffineDiagCov
from ._nif import with_noise_scale as with_noise_scale
from ._upsample import CouplingUpSample as CouplingUpSample
from ._upsample import UpSample as UpSample
