"""Registry cases: dense linear and convolutional bijections (issue 4, part 1)."""

import jax.random as jr
from cases import Case

import nux_eqx as nux

CASES = {
    "AffineDense": Case(lambda: nux.AffineDense()),
    "AffineLDU": Case(lambda: nux.AffineLDU()),
    "AffineSVD": Case(lambda: nux.AffineSVD(n_householders=3)),
    # An orthogonal layer alone leaves sum(contribution) - 0.5 ||z||^2 unchanged: its
    # gradient is zero in exact arithmetic (alone, check_flow passes only on rounding
    # noise ~1e-7), so the case puts a non-orthogonal layer after it.
    "Householder": Case(lambda: nux.Sequential(nux.Householder(2), nux.ActNorm()), covers=("Householder",)),
    # the dispatch itself is tested in tests/test_linear.py
    "Affine-SVD": Case(lambda: nux.Affine(2, mode="SVD"), covers=("Affine",)),
    "OneByOneConvLDU": Case(
        lambda: nux.OneByOneConvLDU(), "image", covers=("OneByOneConvLDU", "OnebyOneConvLDU")
    ),
    "OneByOneConvLU": Case(lambda: nux.OneByOneConvLU(), "image"),
    "LocalDense": Case(lambda: nux.LocalDense(), "image"),
    "LocalDense-identity-2x1": Case(
        lambda: nux.LocalDense((2, 1), init="identity"), "image", covers=("LocalDense",)
    ),
    "CircularConv": Case(lambda: nux.CircularConv(), "image"),
    # odd width: the rfft half-spectrum weights differ from the even case
    "CircularConv-odd": Case(
        lambda: nux.CircularConv((2, 3)), lambda k: jr.normal(k, (6, 3, 5, 2)), covers=("CircularConv",)
    ),
}
