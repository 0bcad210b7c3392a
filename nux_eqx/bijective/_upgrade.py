"""Loading checkpoints written before the transformer redesign (nux_eqx 0.1, issue 17),
when `NeuralSpline`, `ConditionedCoupling`, `MAF`... were classes of their own."""

import json
import os
import tempfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from .._serialise import load, read_header
from ._coupling import Coupling
from ._spline import RationalQuadraticSpline


def load_v1(path: str | os.PathLike, like: PyTree, *, cond_like: PyTree = None):
    """[`nux_eqx.load`][] for a checkpoint written before the transformer redesign.

    Such a checkpoint names the old classes (`NeuralSpline`, `MAF`, ...) in its header, so
    `nux_eqx.load` refuses it; its arrays are unchanged. Build `like` with today's names
    (the same calls as then) and load:

    <!-- not-run: needs a checkpoint written by an older nux_eqx -->
    ```python
    flow = nux.bijective.load_v1("old.eqx", nux.Sequential(nux.NeuralSpline(), ...))
    ```

    The arrays are still checked one by one (paths and shapes). The old `NeuralSpline`
    read its network's output feature-major; its output units are permuted here to
    today's parameter-major order (see [`nux_eqx.Coupling`][]). One difference needs a
    change in `like`: a plain `Coupling` / `MAF` inside a flow initialised with `cond`
    now reads the `cond`; build it with `conditional=False` to load a checkpoint where it
    did not.

    **Arguments:** as for [`nux_eqx.load`][].
    """
    header = read_header(path)
    header.pop("layers", None)  # the old class names and settings
    with open(path, "rb") as f:
        f.readline()
        body = f.read()
    fd, tmp = tempfile.mkstemp(suffix=".eqx")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n" + body)
        flow = load(tmp, like, cond_like=cond_like)
    finally:
        os.unlink(tmp)
    return jax.tree.map(_fix_spline, flow, is_leaf=lambda v: isinstance(v, Coupling))


def _fix_spline(layer):
    if not (isinstance(layer, Coupling) and isinstance(layer.transformer, RationalQuadraticSpline)):
        return layer
    if hasattr(layer.network, "layers"):  # MLP: Linear weight (out, in), bias (out,)
        get, axis = (lambda n: (n.network.layers[-1].weight, n.network.layers[-1].bias)), -2
    elif hasattr(layer.network, "convs"):  # ConvNet: weight (kh, kw, cin, cout), bias (cout,)
        get, axis = (lambda n: (n.network.convs[-1].weight, n.network.convs[-1].bias)), -1
    else:
        raise TypeError("load_v1 converts the spline couplings of the default networks (MLP / ConvNet) only.")
    w, b = get(layer)
    P = 3 * layer.transformer.K - 1
    # Today's output unit p * d + i was unit i * P + p (negative axes: `Repeat` stacks in front).
    perm = np.arange(b.shape[-1]).reshape(-1, P).T.reshape(-1)
    return eqx.tree_at(get, layer, (jnp.take(w, perm, axis=axis), b[..., perm]))
