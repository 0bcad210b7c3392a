"""Datasets that ship inside installed packages: nothing downloads at run time."""

from typing import NamedTuple

import numpy as np


class Split(NamedTuple):
    """A seeded train / valid / test split (numpy arrays, float32)."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def _split(x: np.ndarray, fractions: tuple[float, float, float], seed: int) -> Split:
    n = x.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(fractions[0] * n)
    n_valid = int(fractions[1] * n)
    tr, va, te = perm[:n_train], perm[n_train : n_train + n_valid], perm[n_train + n_valid :]
    return Split(x[tr], x[va], x[te])


def digits(
    *, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.0, 0.2), images: bool = True
) -> Split:
    """scikit-learn's 8x8 digits (1797 images, integer levels 0..16, 17 levels).

    **Arguments:**

    - `seed`: the seed of the split permutation (`numpy.random.default_rng(seed)`).
    - `fractions`: train / valid / test fractions (default the 80/20 split of the
      reference baselines, with no validation set).
    - `images`: `(n, 8, 8, 1)` images (default) or `(n, 64)` vectors.

    **Returns:** a [`nux_eqx.data.Split`][] of float32 arrays holding integer levels.
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
    return _split(x, fractions, seed)


DIGITS_LEVELS = 17
