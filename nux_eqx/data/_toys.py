"""The 2-D toy densities of FFJORD / BNAF (`lib/toy_data.py`), generated in numpy.

Same distributions as FFJORD's generators (not the same random streams): `moons` and
`circles` draw their angles uniformly where scikit-learn's `make_moons` / `make_circles`
use an evenly spaced grid (the same distribution as the number of points grows).
`8gaussians` and `checkerboard` have exact densities, [`toy_log_prob`][], so the true
NLL of a test set is known.
"""

import math

import numpy as np

from ._datasets import Split

_SQ = 1.0 / math.sqrt(2.0)
_CENTRES_8 = 4.0 * np.array(
    [(1, 0), (-1, 0), (0, 1), (0, -1), (_SQ, _SQ), (_SQ, -_SQ), (-_SQ, _SQ), (-_SQ, -_SQ)]
)
_DIV_8 = 1.414  # FFJORD divides everything by 1.414 (not sqrt 2)
_SIGMA_8 = 0.5


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    idx = rng.integers(0, 8, n)
    return (rng.standard_normal((n, 2)) * _SIGMA_8 + _CENTRES_8[idx]) / _DIV_8


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    x1 = rng.random(n) * 4 - 2
    x2_ = rng.random(n) - rng.integers(0, 2, n) * 2
    x2 = x2_ + (np.floor(x1) % 2)
    return np.stack([x1, x2], 1) * 2


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    n_out = n // 2
    t = rng.random(n) * math.pi
    outer = np.arange(n) < n_out
    x = np.where(outer, np.cos(t), 1 - np.cos(t))
    y = np.where(outer, np.sin(t), 1 - np.sin(t) - 0.5)
    pts = np.stack([x, y], 1) + rng.standard_normal((n, 2)) * 0.1
    return rng.permutation(pts) * 2 + np.array([-1, -0.2])


def _circles(rng: np.random.Generator, n: int) -> np.ndarray:
    n_out = n // 2
    t = rng.random(n) * 2 * math.pi
    r = np.where(np.arange(n) < n_out, 1.0, 0.5)
    pts = np.stack([r * np.cos(t), r * np.sin(t)], 1) + rng.standard_normal((n, 2)) * 0.08
    return rng.permutation(pts) * 3


def _rings(rng: np.random.Generator, n: int) -> np.ndarray:
    # Four concentric circles of radii 1, .75, .5, .25 (times 3), equal counts, noise 0.08.
    n4 = n // 4
    counts = [n4, n4, n4, n - 3 * n4]
    parts = []
    for radius, m in zip((1.0, 0.75, 0.5, 0.25), counts):
        t = np.linspace(0, 2 * math.pi, m, endpoint=False)
        parts.append(np.stack([np.cos(t), np.sin(t)], 1) * radius)
    pts = rng.permutation(np.concatenate(parts)) * 3.0
    return pts + rng.normal(scale=0.08, size=pts.shape)


def _pinwheel(rng: np.random.Generator, n: int) -> np.ndarray:
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    rads = np.linspace(0, 2 * math.pi, num_classes, endpoint=False)
    labels = rng.integers(0, num_classes, n)
    features = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    angles = rads[labels] + rate * np.exp(features[:, 0])
    rot = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)], 1).reshape(-1, 2, 2)
    return 2 * np.einsum("ti,tij->tj", features, rot)


def _two_spirals(rng: np.random.Generator, n: int) -> np.ndarray:
    half = n // 2
    m = np.sqrt(rng.random((half, 1))) * 540 * (2 * math.pi) / 360
    d1x = -np.cos(m) * m + rng.random((half, 1)) * 0.5
    d1y = np.sin(m) * m + rng.random((half, 1)) * 0.5
    x = np.vstack((np.hstack((d1x, d1y)), np.hstack((-d1x, -d1y)))) / 3
    if x.shape[0] < n:  # odd n: one more point of the first spiral
        x = np.vstack([x, x[:1]])
    x = x + rng.standard_normal(x.shape) * 0.1
    return rng.permutation(x)


# The torus toy: an equal mixture of products of von Mises densities on two angles.
_TORUS_MEANS = np.array([(-2.0, -2.0), (0.0, 1.5), (2.0, -1.0), (3.0, 3.0)])  # the last wraps
_TORUS_KAPPAS = np.array([(4.0, 4.0), (2.0, 8.0), (6.0, 3.0), (5.0, 5.0)])


def _torus(rng: np.random.Generator, n: int) -> np.ndarray:
    idx = rng.integers(0, len(_TORUS_MEANS), n)
    theta = rng.vonmises(_TORUS_MEANS[idx], _TORUS_KAPPAS[idx])
    theta = np.mod(theta + math.pi, 2 * math.pi) - math.pi  # into [-pi, pi)
    # ... also after the float32 cast: the largest float32 below pi.
    return np.minimum(theta, float(np.nextafter(np.float32(math.pi), np.float32(0))))


TOYS = {
    "moons": (_moons, "2-D two moons (FFJORD: make_moons noise 0.1, scaled by 2, shifted)"),
    "circles": (_circles, "2-D two noisy concentric circles (FFJORD: make_circles factor .5, noise .08, x3)"),
    "8gaussians": (_eight_gaussians, "2-D mixture of 8 Gaussians on a circle (FFJORD); exact NLL known"),
    "checkerboard": (_checkerboard, "2-D uniform on 8 squares of a 4x4 checkerboard (FFJORD); NLL log 32"),
    "pinwheel": (_pinwheel, "2-D pinwheel with 5 arms (FFJORD)"),
    "2spirals": (_two_spirals, "2-D two interleaved spirals (FFJORD)"),
    "rings": (_rings, "2-D four concentric rings (FFJORD)"),
    "torus": (
        _torus,
        "2 angles in [-pi, pi): a mixture of 4 von Mises products on the torus; exact NLL known",
    ),
}


def toy_sample(name: str, n: int, *, seed: int = 0) -> np.ndarray:
    """Draw `n` points of a 2-D toy density with `numpy.random.default_rng(seed)`.

    **Returns:** an `(n, 2)` float32 array.
    """
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; the toys are {sorted(TOYS)}.")
    return TOYS[name][0](np.random.default_rng(seed), int(n)).astype(np.float32)


def toy(
    name: str,
    *,
    seed: int = 0,
    n_train: int = 100_000,
    n_valid: int = 10_000,
    n_test: int = 100_000,
) -> Split:
    """A 2-D toy dataset: independent seeded draws for train, valid and test.

    Not standardised: the toys are already of order 1, and NLLs are in data units.

    **Arguments:**

    - `name`: one of `moons`, `circles`, `8gaussians`, `checkerboard`, `pinwheel`,
      `2spirals`, `rings`, `torus` (angles in `[-pi, pi)`).
    - `seed`: the split draws use `numpy.random.default_rng([seed, i])`, i = 0, 1, 2.
    - `n_train`, `n_valid`, `n_test`: sizes.

    **Returns:** a [`nux_eqx.data.Split`][].
    """
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; the toys are {sorted(TOYS)}.")
    gen = TOYS[name][0]
    parts = [
        gen(np.random.default_rng([seed, i]), int(m)).astype(np.float32)
        for i, m in enumerate((n_train, n_valid, n_test))
    ]
    return Split(*parts, name=name)


def toy_log_prob(name: str, x: np.ndarray) -> np.ndarray:
    """The exact log-density of the toys that have one: `8gaussians`, `checkerboard` and
    `torus`.

    `8gaussians` is the mixture `(1/8) sum_i N(c_i / 1.414, (0.5 / 1.414)^2 I)`;
    `checkerboard` is uniform (density 1/32) on its 8 squares of side 2, `-inf` outside;
    `torus` is `(1/4) sum_i prod_j exp(kappa_ij cos(x_j - mu_ij)) / (2 pi I0(kappa_ij))` on
    `[-pi, pi)^2` (with respect to the angles), `-inf` outside.
    The mean of `-toy_log_prob` over a test set is the true NLL (about 2.833 and
    log 32 = 3.466).

    **Arguments:**

    - `name`: `"8gaussians"`, `"checkerboard"` or `"torus"`.
    - `x`: points, shape `(n, 2)`.

    **Returns:** an `(n,)` float64 array.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"toy_log_prob expects points of shape (n, 2), got {x.shape}.")
    if name == "8gaussians":
        s = _SIGMA_8 / _DIV_8
        c = _CENTRES_8 / _DIV_8
        d2 = np.sum((x[:, None, :] - c[None]) ** 2, -1)
        comp = -0.5 * d2 / s**2 - math.log(2 * math.pi * s**2)
        m = comp.max(1)
        return m + np.log(np.mean(np.exp(comp - m[:, None]), 1))
    if name == "checkerboard":
        inside = np.all((x >= -4) & (x < 4), 1)
        a, b = np.floor(x[:, 0] / 2), np.floor(x[:, 1] / 2)
        on = inside & ((a + b) % 2 == 0)
        return np.where(on, -math.log(32.0), -np.inf)
    if name == "torus":
        d = x[:, None, :] - _TORUS_MEANS[None]
        comp = np.sum(_TORUS_KAPPAS * np.cos(d) - np.log(2 * math.pi * np.i0(_TORUS_KAPPAS)), -1)
        inside = np.all((x >= -math.pi) & (x < math.pi), 1)
        m = comp.max(1)
        return np.where(inside, m + np.log(np.mean(np.exp(comp - m[:, None]), 1)), -np.inf)
    raise ValueError(
        f"the exact density is known for '8gaussians', 'checkerboard' and 'torus', not {name!r}."
    )
