"""Training: compiled steps for any optax optimizer, `fit`, losses and checkpoints."""

from ._checkpoint import load_checkpoint as load_checkpoint
from ._checkpoint import read_checkpoint_info as read_checkpoint_info
from ._checkpoint import save_checkpoint as save_checkpoint
from ._fit import fit as fit
from ._jit import LEAN_CPU_COMPILE as LEAN_CPU_COMPILE
from ._jit import auto_compiler_options as auto_compiler_options
from ._losses import batch_log_prob as batch_log_prob
from ._losses import batch_sample as batch_sample
from ._losses import bits_per_dim as bits_per_dim
from ._losses import importance_weighted_nll as importance_weighted_nll
from ._losses import nll as nll
from ._losses import reverse_kl as reverse_kl
from ._losses import reverse_kl_loss as reverse_kl_loss
from ._step import TrainStep as TrainStep
from ._step import make_step as make_step
from ._vi import ImportanceEstimate as ImportanceEstimate
from ._vi import fit_vi as fit_vi
from ._vi import importance_log_z as importance_log_z
