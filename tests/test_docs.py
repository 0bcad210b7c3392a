"""Every code block of the documentation runs, or says why it does not.

Each page's blocks run in order in one temporary folder: ```python blocks in one
namespace, ```bash blocks with bash (`nux-eqx` is this checkout's command). A block that
must not run here (an install, a training run of minutes, a command's output, a sketch
that needs several hosts) is preceded by a comment with the reason, which the site does
not show:

    <!-- not-run: trains for 1.5 minutes -->
    ```bash
    nux-eqx train
    ```

A block in another language, or without a language, must be marked the same way, so no
snippet is left unchecked silently (a Python heredoc inside a bash block once was).
"""

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = pathlib.Path(__file__).parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "scripts" not in p.parts)
RUN_PAGES = [p for p in PAGES if "api" not in p.parts]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->\s*$")
PYTHON = {"python", "py", "python3"}
SHELL = {"bash", "sh", "shell"}


@dataclasses.dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    not_run: str | None  # the reason given, if marked


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown page (indented ones too, e.g. inside admonitions)."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks = m["indent"], m["ticks"]
        lang = re.sub(r"[{}.]", " ", m["info"]).split()
        lang = lang[0].lower() if lang else ""
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(prev)
        body, j = [], i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(ticks[0] * len(ticks)) and not lines[j].strip().strip(ticks[0])
        ):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        out.append(Block(lang, "\n".join(body) + "\n", i + 1, marker["reason"] if marker else None))
        i = j + 1
    return out


def _rel(page: pathlib.Path) -> str:
    return str(page.relative_to(DOCS))


def test_block_parser():
    text = (
        "<!-- not-run: needs two hosts -->\n```python\nboom()\n```\n\n"
        "!!! note\n    ```bash\n    echo hi\n    ```\n\n```text\nout\n```\n"
    )
    got = [(b.lang, b.code, b.not_run) for b in blocks(text)]
    assert got == [
        ("python", "boom()\n", "needs two hosts"),
        ("bash", "echo hi\n", None),
        ("text", "out\n", None),
    ]


@pytest.mark.parametrize("page", PAGES, ids=[_rel(p) for p in PAGES])
def test_every_block_runs_or_says_why_not(page):
    runs = PYTHON | SHELL if page in RUN_PAGES else set()
    for b in blocks(page.read_text()):
        assert b.lang in runs or b.not_run, (
            f"{_rel(page)}:{b.line}: this ```{b.lang} block is not run by the docs tests; run it "
            "(python or bash, on a tutorial page) or put `<!-- not-run: the reason -->` on the line above it"
        )


@pytest.mark.parametrize("page", RUN_PAGES, ids=[_rel(p) for p in RUN_PAGES])
def test_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{page.stem}"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # `nux-eqx` is this checkout's command, whatever is installed
    prelude = f'nux-eqx() {{ "{sys.executable}" -m nux_eqx.cli "$@"; }}\nset -euo pipefail\n'
    for b in blocks(page.read_text()):
        if b.not_run:
            continue
        where = f"{_rel(page)}:{b.line}"
        if b.lang in PYTHON:
            try:
                exec(compile(b.code, where, "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"{where}: python block failed: {e!r}") from e
        elif b.lang in SHELL:
            r = subprocess.run(
                ["bash", "-c", prelude + b.code], env=env, capture_output=True, text=True, timeout=600
            )
            assert r.returncode == 0, f"{where}: bash block failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"


def test_math_ships_with_the_site():
    """No script comes from a CDN: formulas render offline (tools/check_docs_math.py
    checks the rendering itself in a headless browser)."""
    yaml = pytest.importorskip("yaml")  # installed with the docs extra (mkdocs)

    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    scripts = config["extra_javascript"]
    assert any("mathjax" in s for s in scripts)
    for s in scripts:
        assert "://" not in s, f"mkdocs.yml loads {s} from the internet; vendor it (tools/vendor_mathjax.sh)"
        assert (DOCS / s).is_file(), f"mkdocs.yml names docs/{s}, which does not exist"
    assert list((DOCS / "javascripts/mathjax/output/chtml/fonts/woff-v2").glob("*.woff"))
