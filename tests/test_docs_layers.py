"""docs/layers.md's table of all layers is generated from the code, and kept in sync.

    python tests/test_docs_layers.py        # rewrite the table after changing a layer

Kind, key and cond come from the classes; the example shapes from the check_flow registry
(tests/cases_*.py: each layer initialised on its registry batch, shapes only); the
default network from the constructor's defaults.
"""

import inspect
import pathlib
import sys

import equinox as eqx
import jax
import jax.random as jr

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from cases import all_cases, data_of  # noqa: E402

import nux_eqx as nux  # noqa: E402

PAGE = pathlib.Path(__file__).parents[1] / "docs" / "layers.md"
START, END = "<!-- layer-table:start -->", "<!-- layer-table:end -->"
MODULES = ["bijective", "injective", "surjective", "priors"]


_KINDS = {
    nux.AbstractBijection: "bijective",
    nux.AbstractInjective: "injective",
    nux.AbstractSurjective: "surjective",
    nux.AbstractPrior: "prior",
    nux.AbstractContainer: "container",
}


def _kind(cls) -> str:
    """The kind is the abstract base class."""
    for base, name in _KINDS.items():
        if isinstance(cls, type) and issubclass(cls, base):
            return name
    return "?"


def _network(cls) -> str:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return ""
    out = []
    h = params.get("hidden_layer_sizes")
    if h is not None and isinstance(h.default, tuple) and h.default:
        sizes = h.default
        shape = f"{len(sizes)}x{sizes[0]}" if len(set(sizes)) == 1 else "x".join(map(str, sizes))
        out.append(f"MLP {shape}")
    c = params.get("n_channels")
    if c is not None and isinstance(c.default, int):
        out.append(f"conv width {c.default}")
    return ", ".join(out)


def _shapes() -> dict[type, tuple]:
    """For each layer class, the (in, out) shapes of its first registry case."""
    out: dict[type, tuple] = {}
    for case in all_cases().values():
        flow = case.make()
        if type(flow) in out:
            continue
        x = jax.eval_shape(lambda k, c=case: data_of(c, k), jr.key(0))
        c = jax.eval_shape(case.cond, jr.key(1)) if case.cond else None
        try:
            f = eqx.filter_eval_shape(lambda f, x, c: nux.init(f, x, key=jr.key(0), cond=c), flow, x, c)
        except Exception:  # pragma: no cover - a registry case that does not init is tested elsewhere
            continue
        out[type(flow)] = (f.in_shape, f.out_shape)
    return out


def _fmt(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _group(cls) -> str:
    part = cls.__module__.split(".")[1]
    return "containers" if part in ("_containers", "_repeat") else part


def table() -> str:
    shapes = _shapes()
    rows = [
        "| layer | kind | example: shape in -> out | needs a key | needs `cond` | default network |",
        "|---|---|---|---|---|---|",
    ]
    classes: dict[int, list[str]] = {}
    for name in nux.__all__:
        cls = getattr(nux, name)
        if inspect.isclass(cls) and issubclass(cls, nux.AbstractFlow) and not name.startswith("Abstract"):
            classes.setdefault(id(cls), []).append(name)
    order = ["containers", *MODULES]
    entries = []
    for names in classes.values():
        cls = getattr(nux, names[0])
        main = cls.__name__ if cls.__name__ in names else sorted(names)[0]
        entries.append(
            (order.index(_group(cls)) if _group(cls) in order else 99, main.lower(), main, names, cls)
        )
    for _, _, name, names, cls in sorted(entries):
        label = f"[`{name}`][nux_eqx.{name}]" + "".join(f" (`{a}`)" for a in sorted(names) if a != name)
        io = shapes.get(cls)
        io = f"{_fmt(io[0])} -> {_fmt(io[1])}" if io and io[0] is not None else ""
        rows.append(
            f"| {label} | {_kind(cls)} | {io} | "
            f"{'yes' if getattr(cls, 'forward_needs_key', False) else ''} | "
            f"{'yes' if getattr(cls, 'needs_cond', False) else ''} | {_network(cls)} |"
        )
    return "\n".join(rows)


def _page_table() -> str:
    text = PAGE.read_text()
    return text[text.index(START) + len(START) : text.index(END)].strip()


def test_layer_table_is_current():
    assert _page_table() == table(), (
        "docs/layers.md's table is out of date: run `python tests/test_docs_layers.py` to regenerate it"
    )


if __name__ == "__main__":
    text = PAGE.read_text()
    i, j = text.index(START) + len(START), text.index(END)
    PAGE.write_text(text[:i] + "\n" + table() + "\n" + text[j:])
    print(f"wrote the table into {PAGE}")
