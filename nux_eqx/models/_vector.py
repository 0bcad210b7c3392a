"""Ready-made flows for vectors (and RealNVP for images): `RealNVP`,
`MaskedAutoregressiveFlow`, `NeuralSplineFlow`."""

from collections.abc import Callable, Sequence
from typing import Literal

from .._containers import Sequential
from .._flow import AbstractFlow
from .._repeat import Repeat
from ..bijective import ActNorm, Coupling, ElementwiseAffine, Logit, Permute, Reverse, Roll
from ..bijective._transformers import ScaleParam
from ..priors import UnitGaussianPrior
from ..surjective import UniformDequantization


def _builder(fn):
    fn.__nux_builder__ = True
    return fn


def _check_layers(name: str, n_layers: int) -> int:
    n_layers = int(n_layers)
    if n_layers < 1:
        raise ValueError(f"{name}: n_layers must be >= 1, got {n_layers}.")
    return n_layers


_MIXERS = ("roll", "random", "reverse")


def _mixer(permutation: str, i: int | None) -> AbstractFlow:
    if permutation == "roll":
        return Roll()
    if permutation == "reverse":
        return Reverse()
    return Permute(seed=i)


def _stack(
    scan: bool, n_layers: int, layer: Callable[[int | None], list[AbstractFlow]]
) -> list[AbstractFlow]:
    """`n_layers` layers `layer(i)`, unrolled, or scanned as one `Repeat` (`scan=True`;
    `layer(None)` then builds the block, whose permutation is drawn from the init key)."""
    if not scan:
        return [f for i in range(n_layers) for f in layer(i)]
    return [Repeat(Sequential(*layer(None)), n_layers)]


def _check_scan(name: str, scan: bool) -> None:
    if not isinstance(scan, bool):
        raise TypeError(f"{name}: scan must be True or False, got {scan!r}.")


def _check_choice(name: str, arg: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name}: {arg} must be {' or '.join(map(repr, options))}, got {value!r}.")


def _finish(layers: list[AbstractFlow], dequantize: float | None, lmbda: float) -> Sequential:
    body = [*layers, UnitGaussianPrior()]
    if dequantize is not None:
        body = [UniformDequantization(scale=dequantize), Logit(lmbda), *body]
    return Sequential(*body)


@_builder
def RealNVP(
    n_layers: int = 8,
    hidden_layer_sizes: Sequence[int] = (128, 128),
    *,
    n_channels: int = 64,
    kind: Literal["affine", "additive"] = "affine",
    mask: Literal["half", "checkerboard"] = "half",
    permutation: Literal["roll", "random", "reverse"] = "roll",
    actnorm: bool = True,
    dequantize: float | None = None,
    lmbda: float = 0.05,
    scan: bool = True,
    scale: ScaleParam = "tanh",
    split: Literal["ceil", "floor"] = "ceil",
) -> Sequential:
    """RealNVP (Dinh et al. 2017): a stack of coupling layers and a standard normal prior.

    Each of the `n_layers` layers is `ActNorm -> Coupling -> permutation` with
    `mask="half"` (vectors; images with at least 2 channels, split on channels), or
    `ActNorm -> Coupling(mask="checkerboard", parity=i % 2)` with `mask="checkerboard"`
    (images, including one-channel images: RealNVP's spatial checkerboard masks). By
    default the layers are scanned (`scan=True`, below).

    **Arguments:**

    - `n_layers`: the number of coupling layers.
    - `hidden_layer_sizes`: the widths of each coupling's MLP (vectors).
    - `n_channels`: the hidden width of each coupling's ConvNet (images).
    - `kind`: `"affine"` (default) or `"additive"` couplings.
    - `mask`: `"half"` (default) or `"checkerboard"` (images).
    - `permutation`: what mixes the features between half-mask couplings:
      [`nux_eqx.Roll`][]`()` (`"roll"`, default: a cyclic shift that hands the features
      one coupling left alone to the next and transforms every feature equally often; on
      the 7-D galaxy table, five seeds, median test NLL -6.62 against -6.26 with
      `"random"`), a fixed random [`nux_eqx.Permute`][] per layer (`"random"`, the earlier
      default: pass it to load a checkpoint written with it into a flow you construct), or
      `Reverse()` (`"reverse"`, classic RealNVP; for vectors of odd size the middle
      feature is then never transformed by a coupling).
    - `actnorm`: start each layer with a data-initialised `ActNorm` (default `True`).
    - `dequantize`, `lmbda`: for integer levels `0 .. dequantize - 1`, start with
      `UniformDequantization(scale=dequantize)` and `Logit(lmbda)` (the log-likelihood is
      then that of the discrete data, a lower bound).
    - `scan`: `True` (default) runs the layers as one [`nux_eqx.Repeat`][]: a single
      block whose parameters are stacked and scanned with `jax.lax.scan` (with
      `permutation="random"` the block holds `Permute(seed=None)`, so each block's
      permutation is drawn from the init key; checkerboard masks alternate their parity,
      so there the block is a pair of layers). It compiles once whatever `n_layers` is,
      and the flow is a small pytree, so a hand-written `eqx.filter_jit` step spends little
      time flattening it. `False` unrolls the layers in a `Sequential` (with
      `permutation="random"`, `Permute(seed=i)`): with `permutation="random"` and
      `split="floor"`, nux_eqx 0.1's layout (pass them to load a checkpoint written by 0.1
      into a flow you construct).
    - `scale`: the affine couplings' scale parametrisation (see
      [`nux_eqx.ElementwiseAffine`][]): `"tanh"` (default: NuX's bounded log-scale) or
      `"inverse_softplus"` (FlowJAX's map). On the 7-D galaxy table (five seeds each) neither
      was better: median test NLL at the best validation step -6.26 (tanh) vs -6.09,
      unrolled -6.48 vs -6.42 (Performance page).
    - `split`: how an odd-sized vector is split by the half-mask couplings (see
      [`nux_eqx.Coupling`][]): `"ceil"` (default) transforms `ceil(d/2)` features,
      `"floor"` `floor(d/2)` (nux_eqx 0.1 and NuX).

    **Returns:** an un-initialised `Sequential`; call `nux_eqx.init` on a batch.

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (256, 2))
        flow = nux.init(nux.RealNVP(4, (32, 32)), x, key=jax.random.key(1))   # 4 layers, MLP 2x32
        print(flow.layers[0].n, len(flow.layers[0].blocks()))                 # 4 4: one Repeat
        print(nux.log_prob(flow, x[0]).shape)                                 # ()
        ```
    """
    n_layers = _check_layers("RealNVP", n_layers)
    _check_choice("RealNVP", "permutation", permutation, _MIXERS)
    _check_scan("RealNVP", scan)
    _check_choice("RealNVP", "split", split, ("ceil", "floor"))
    _check_choice("RealNVP", "mask", mask, ("half", "checkerboard"))

    if scale != "tanh" and kind != "affine":
        raise ValueError(f"RealNVP: scale is for affine couplings; kind={kind!r} has none.")
    ElementwiseAffine(scale)  # checks the value

    def transformer():
        return ElementwiseAffine(scale) if kind == "affine" else None

    def layer(i: int | None) -> list[AbstractFlow]:
        first = [ActNorm()] if actnorm else []
        if mask == "checkerboard":
            c = Coupling(transformer(), kind=kind, n_channels=n_channels, mask="checkerboard", parity=i % 2)
            return [*first, c]
        coupling = Coupling(
            transformer(), kind=kind, hidden_layer_sizes=hidden_layer_sizes, n_channels=n_channels, split=split
        )
        return [*first, coupling, _mixer(permutation, i)]

    if mask == "checkerboard" and scan:
        # the parity alternates: scan over pairs of layers, the odd one out after them
        pairs = _stack(True, n_layers // 2, lambda _: [*layer(0), *layer(1)]) if n_layers > 1 else []
        layers = pairs + (layer(n_layers - 1) if n_layers % 2 else [])
    else:
        layers = _stack(scan, n_layers, layer)
    return _finish(layers, dequantize, lmbda)


@_builder
def MaskedAutoregressiveFlow(
    n_layers: int = 5,
    hidden_layer_sizes: Sequence[int] = (128, 128),
    *,
    actnorm: bool = True,
    seed: int = 0,
    scale: ScaleParam = "inverse_softplus",
    ordering: Literal["data_first", "random"] = "data_first",
) -> Sequential:
    """A masked autoregressive flow (Papamakarios et al. 2017) for vectors.

    `n_layers` layers of `ActNorm -> MaskedAutoregressive(ElementwiseAffine(scale),
    ordering=...)`, then a standard normal prior. The first layer generates the features
    in the data's own order (`ordering="sequential"`), each later layer `i` in a fixed
    random order (`ordering="random", seed=seed + i`). Density evaluation is one MADE pass
    per layer; sampling is sequential (`dim` passes per layer).

    **Arguments:**

    - `n_layers`: the number of MAF layers.
    - `hidden_layer_sizes`: the MADE widths (at least `dim - 1` wide for full
      autoregressive connectivity).
    - `actnorm`: data-initialised `ActNorm` before each layer (default `True`).
    - `seed`: layer `i`'s random ordering is drawn from `seed + i`.
    - `scale`: the affine maps' scale parametrisation (see
      [`nux_eqx.ElementwiseAffine`][]): `"inverse_softplus"` (default after nux_eqx 0.1; on the
      7-D galaxy table five layers reached a median test NLL of -5.86 over three seeds,
      FlowJAX's MAF -6.02) or `"tanh"` (NuX's bounded log-scale, [`nux_eqx.MAF`][]'s,
      and this model's in 0.1: -5.54; pass it to load a checkpoint written then into
      a flow you construct).
    - `ordering`: `"data_first"` (default) or `"random"` (every layer in a random order:
      this model's layout until this option was added, nux_eqx 0.1 included; pass it to
      load a checkpoint written then into a flow you construct). The data's column order often
      carries structure (neighbouring pixels of a patch, a time series, related
      measurements side by side), which the first layer then conditions on directly.
      FlowJAX's MAF, whose permutations come after each layer, does the same. On 8x8
      image patches (`patches`, 63-D, three seeds) it lowered the validation NLL after
      2000 steps from 1.45 to 1.17 nats and the test NLL from 7.81 to 7.53 (FlowJAX's MAF:
      0.91 and 7.55); on the galaxy table (7-D, ten seeds) the median test NLL was -6.07
      against -6.08 (FlowJAX -6.01).

    **Returns:** an un-initialised `Sequential`.

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (256, 3))
        flow = nux.init(nux.MaskedAutoregressiveFlow(2, (32,)), x, key=jax.random.key(1))
        print(nux.log_prob(flow, x[0]).shape, nux.sample(flow, jax.random.key(2))[0].shape)  # () (3,)
        ```
    """
    from ..bijective import ElementwiseAffine, MaskedAutoregressive

    n_layers = _check_layers("MaskedAutoregressiveFlow", n_layers)
    transformer = ElementwiseAffine(scale)  # checks the value
    _check_choice("MaskedAutoregressiveFlow", "ordering", ordering, ("data_first", "random"))
    layers: list[AbstractFlow] = []
    for i in range(n_layers):
        if actnorm:
            layers.append(ActNorm())
        order = "sequential" if ordering == "data_first" and i == 0 else "random"
        layers.append(MaskedAutoregressive(transformer, hidden_layer_sizes, ordering=order, seed=seed + i))
    return _finish(layers, None, 0.0)


@_builder
def NeuralSplineFlow(
    n_layers: int = 8,
    hidden_layer_sizes: Sequence[int] = (128, 128),
    *,
    K: int = 8,
    B: float = 4.0,
    n_channels: int = 64,
    permutation: Literal["roll", "random", "reverse"] = "random",
    actnorm: bool = True,
    dequantize: float | None = None,
    lmbda: float = 0.05,
    scan: bool = True,
    split: Literal["ceil", "floor"] = "ceil",
) -> Sequential:
    """A coupling neural spline flow (RQ-NSF (C), Durkan et al. 2019).

    `n_layers` layers of `ActNorm -> NeuralSpline(K, B) -> permutation`, then a standard
    normal prior. The splines act on `[-B, B]` with identity tails, so data should be
    standardised (the data-initialised `ActNorm` does this for the first batch).

    **Arguments:**

    - `n_layers`: the number of spline couplings.
    - `hidden_layer_sizes`: the widths of each coupling's MLP (vectors).
    - `K`: bins per spline; `B`: the spline interval's half-width.
    - `n_channels`: the ConvNet width (images).
    - `permutation`: `"random"` ([`nux_eqx.Permute`][], default: a random permutation per
      layer), `"roll"` ([`nux_eqx.Roll`][], which transforms every feature equally often
      but mixes them slowly when `d` is large) or `"reverse"`. For spline couplings the
      choice depends on the data: on the 7-D galaxy table `"roll"` was about as good and
      varied less between seeds (median test NLL -6.65 over ten seeds, every seed between
      -6.84 and -6.51), on the 63-D `patches` table worse (12.85 against 12.24 nats, three
      seeds; Performance page). [`RealNVP`][] uses `"roll"`, which was better for affine
      couplings on both.
    - `actnorm`: data-initialised `ActNorm` before each coupling (default `True`).
    - `dequantize`, `lmbda`: as for [`RealNVP`][].
    - `scan`: `True` (default) runs the layers as one [`nux_eqx.Repeat`][]: a single
      block whose parameters are stacked and scanned with `jax.lax.scan` (with
      `permutation="random"` the block holds `Permute(seed=None)`, so each block's
      permutation is drawn from the init key). It compiles once whatever `n_layers` is,
      and the flow is a small pytree, so a hand-written `eqx.filter_jit` step spends little
      time flattening it. `False` unrolls the layers in a `Sequential` (with
      `permutation="random"`, `Permute(seed=i)`): with `permutation="random"` and
      `split="floor"`, nux_eqx 0.1's layout (pass them to load a checkpoint written by 0.1
      into a flow you construct).
    - `split`: as for [`RealNVP`][].

    **Returns:** an un-initialised `Sequential`.

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (256, 2))
        flow = nux.init(nux.NeuralSplineFlow(2, (16,), K=8, B=4.0), x, key=jax.random.key(1))
        z, log_px = flow(x[0])
        print(z.shape, log_px.shape)                  # (2,) ()
        ```
    """
    from ..bijective import NeuralSpline

    n_layers = _check_layers("NeuralSplineFlow", n_layers)
    _check_choice("NeuralSplineFlow", "permutation", permutation, _MIXERS)
    _check_scan("NeuralSplineFlow", scan)
    _check_choice("NeuralSplineFlow", "split", split, ("ceil", "floor"))

    def layer(i: int | None) -> list[AbstractFlow]:
        first = [ActNorm()] if actnorm else []
        spline = NeuralSpline(
            K=K, B=B, hidden_layer_sizes=hidden_layer_sizes, n_channels=n_channels, split=split
        )
        return [*first, spline, _mixer(permutation, i)]

    return _finish(_stack(scan, n_layers, layer), dequantize, lmbda)
