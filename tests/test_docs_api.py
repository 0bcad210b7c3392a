"""Every public name is in the API reference (docs/api/) and has a docstring.

A name is documented when a `::: dotted.path` stub on an API page resolves to the same
object, and the name itself is written on an API page (so an alias such as
`nux_eqx.OnebyOneConv` must be mentioned, not only its target rendered).
"""

import importlib
import inspect
import pathlib
import re
import types

import pytest

import nux_eqx

API = pathlib.Path(__file__).parents[1] / "docs" / "api"
MKDOCS = pathlib.Path(__file__).parents[1] / "mkdocs.yml"
STUB = re.compile(r"^::: *([\w.]+)", re.M)
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


def _public(modname: str) -> list[tuple[str, object]]:
    module = importlib.import_module(modname)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    out = []
    for name in names:
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            continue  # subpackages get a page of their own; the test below checks that
        if not (inspect.isclass(value) or callable(value)):
            if not getattr(type(value), "__module__", "").startswith(("builtins", "nux_eqx")):
                continue  # imported helpers (typing constructs and so on)
        elif not getattr(value, "__module__", "").startswith("nux_eqx"):
            continue  # re-exported third-party names are not ours to document
        out.append((f"{modname}.{name}", value))
    return out


PUBLIC = [pair for m in MODULES for pair in _public(m)]


def _resolve(path: str):
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def _pages() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(API.glob("*.md"))}


def test_api_pages_exist_and_are_in_nav():
    pages = _pages()
    assert pages, "docs/api/ holds no pages"
    nav = MKDOCS.read_text()
    for name in pages:
        assert f"api/{name}" in nav, f"docs/api/{name} is not in mkdocs.yml's nav"


def test_every_stub_resolves():
    for page, text in _pages().items():
        for path in STUB.findall(text):
            try:
                _resolve(path)
            except (ImportError, AttributeError) as e:
                raise AssertionError(f"docs/api/{page}: `::: {path}` names nothing ({e!r})") from e


def test_every_subpackage_has_a_page():
    text = "\n".join(_pages().values())
    for name in nux_eqx.__all__:
        if isinstance(getattr(nux_eqx, name), types.ModuleType):
            assert f"`nux_eqx.{name}`" in text, f"subpackage nux_eqx.{name} is not mentioned in docs/api/"


@pytest.mark.parametrize("path,value", PUBLIC, ids=[p for p, _ in PUBLIC])
def test_public_name_documented(path, value):
    pages = _pages()
    text = "\n".join(pages.values())
    rendered = {id(_resolve(p)) for t in pages.values() for p in STUB.findall(t)}
    short = path.rsplit(".", 1)[1]
    if inspect.isclass(value) or callable(value):
        assert id(value) in rendered, f"{path} has no `::: ...` stub in docs/api/"
        doc = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
        assert doc and doc.strip(), f"{path} ({value.__module__}) has no docstring"
        # an alias is mentioned by its own name somewhere in the reference
        assert re.search(rf"\b{re.escape(short)}\b", text), f"{path} is never named in docs/api/"
    else:  # a constant: it is explained in prose
        assert f"`{path}`" in text or f"`nux_eqx.{short}`" in text, f"{path} is not explained in docs/api/"
