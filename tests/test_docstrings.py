"""Every ```python block in a public docstring runs (the examples in the API reference).

Found automatically: any public class, function or method of nux_eqx whose docstring
holds a fenced python block is collected, so a new example is tested as soon as it is
written. A block that must not run says why with `<!-- not-run: reason -->` on the line
above it, as on the documentation pages (tests/test_docs.py).
"""

import importlib
import inspect
import types

import matplotlib
import pytest
from test_docs import PYTHON, blocks

matplotlib.use("Agg")

MODULES = [
    "nux_eqx",
    "nux_eqx.bijective",
    "nux_eqx.injective",
    "nux_eqx.surjective",
    "nux_eqx.priors",
    "nux_eqx.nn",
    "nux_eqx.data",
    "nux_eqx.train",
    "nux_eqx.models",
    "nux_eqx.testing",
]


def _documented() -> dict[str, object]:
    """Public objects of nux_eqx (and their methods), each once, by their shortest name."""
    seen: dict[int, str] = {}
    out: dict[str, object] = {}

    def add(name, obj):
        if id(obj) in seen or not getattr(obj, "__module__", "").startswith("nux_eqx"):
            return
        seen[id(obj)] = name
        out[name] = obj

    for modname in MODULES:
        module = importlib.import_module(modname)
        for name in getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")]):
            obj = getattr(module, name, None)
            if isinstance(obj, types.ModuleType) or not (inspect.isclass(obj) or callable(obj)):
                continue
            add(f"{modname}.{name}", obj)
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") and attr not in ("__call__", "__init__"):
                        continue
                    member = getattr(member, "__func__", getattr(member, "fget", member))
                    if callable(member) and getattr(member, "__doc__", None):
                        add(f"{modname}.{name}.{attr}", member)
    return out


def _examples() -> list[tuple[str, list]]:
    found = []
    for name, obj in _documented().items():
        doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        bs = [b for b in blocks(inspect.cleandoc(doc or ""))]
        if bs:
            found.append((name, bs))
    return found


EXAMPLES = _examples()


def test_examples_are_found():
    names = {n for n, _ in EXAMPLES}
    for expected in ("nux_eqx.save", "nux_eqx.load", "nux_eqx.init", "nux_eqx.Sequential"):
        assert expected in names, f"{expected}'s docstring example was not found"


@pytest.mark.parametrize("name,bs", EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_docstring_example_runs(name, bs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docstring_{name}"}
    for i, b in enumerate(bs):
        assert b.lang in PYTHON or b.not_run, (
            f"{name}: docstring block {i + 1} is ```{b.lang}; examples are python blocks "
            "(or say why not with `<!-- not-run: reason -->`)"
        )
        if b.not_run:
            continue
        try:
            exec(compile(b.code, f"{name} docstring block {i + 1}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{name}: docstring example {i + 1} failed: {e!r}") from e
