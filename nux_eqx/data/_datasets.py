"""Datasets that ship inside installed packages: nothing downloads at run time.

`Split` is what every loader returns: seeded train / valid / test arrays plus what is
needed to report likelihoods in data units (the standardisation) or in bits per discrete
dimension (the number of levels).
"""

import dataclasses
import math
from collections.abc import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """A seeded train / valid / test split (numpy arrays, float32).

    It unpacks like a tuple, `train, valid, test = split`.

    **Fields:**

    - `train`, `valid`, `test`: arrays with one leading example axis (`valid` may have
      zero rows).
    - `mean`, `std`: when the data were standardised with the training split's statistics
      (`x = (raw - mean) / std`), those statistics (arrays of one example's shape), else
      `None`. A density on the standardised data converts to data units with
      [`Split.to_data_units`][]: `NLL_raw = NLL_std + sum(log std)`.
    - `levels`: for discrete data (images), the number of integer levels (17 for digits,
      256 for 8-bit images), else `None`.
    - `name`: the dataset's registry name.
    - `columns`: names of the features of tabular data, else `None`.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    levels: int | None = None
    name: str = ""
    columns: tuple[str, ...] | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.train, self.valid, self.test))

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example."""
        return tuple(self.train.shape[1:])

    @property
    def log_std_sum(self) -> float:
        """`sum(log std)`: the log-determinant of the standardisation (0 when not standardised)."""
        if self.std is None:
            return 0.0
        return float(np.sum(np.log(np.asarray(self.std, np.float64))))

    def to_data_units(self, nll: float) -> float:
        """Convert a negative log-likelihood (nats per example) on the standardised data to
        the raw data's units: `nll + sum(log std)` (the change-of-variables term of
        `x = (raw - mean) / std`). Identity when the data were not standardised."""
        return float(nll) + self.log_std_sum

    def unstandardise(self, x: np.ndarray) -> np.ndarray:
        """Map standardised examples (e.g. samples of a flow) back to data units."""
        if self.std is None:
            return np.asarray(x)
        return np.asarray(x) * self.std + self.mean


def split_rows(x: np.ndarray, fractions: tuple[float, float, float], seed: int) -> Split:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}.")
    n = x.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(fractions[0] * n)
    n_valid = int(fractions[1] * n)
    tr, va, te = perm[:n_train], perm[n_train : n_train + n_valid], perm[n_train + n_valid :]
    return Split(x[tr], x[va], x[te])


def standardise(split: Split, *, eps: float = 1e-12) -> Split:
    """Standardise every split with the TRAINING split's per-feature mean and std.

    **Returns:** a new [`Split`][] with `mean` and `std` set (float32 arrays).
    """
    mean = split.train.mean(axis=0, dtype=np.float64)
    std = split.train.std(axis=0, dtype=np.float64)
    std = np.where(std > eps, std, 1.0)

    def f(a):
        return ((a - mean) / std).astype(np.float32)

    return dataclasses.replace(
        split,
        train=f(split.train),
        valid=f(split.valid),
        test=f(split.test),
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
    )


def digits(
    *, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.0, 0.2), images: bool = True
) -> Split:
    """scikit-learn's 8x8 digits (1797 images, integer levels 0..16, 17 levels).

    **Arguments:**

    - `seed`: the seed of the split permutation (`numpy.random.default_rng(seed)`).
    - `fractions`: train / valid / test fractions (default the 80/20 split of the
      reference baselines, with no validation set).
    - `images`: `(n, 8, 8, 1)` images (default) or `(n, 64)` vectors.

    **Returns:** a [`nux_eqx.data.Split`][] of float32 arrays holding integer levels
    (`levels=17`).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits dataset ships with scikit-learn: `pip install scikit-learn` "
            "(or `pip install nux_eqx[data]`)."
        ) from e
    x = load_digits().images.astype(np.float32)
    x = x[..., None] if images else x.reshape(len(x), -1)
    s = split_rows(x, fractions, seed)
    return dataclasses.replace(s, levels=DIGITS_LEVELS, name="digits" if images else "digits64")


DIGITS_LEVELS = 17
