"""Build the site and check, in headless Chromium with no internet, that formulas render.

    python tools/check_docs_math.py                 # build strictly, serve locally, check
    python tools/check_docs_math.py --site /tmp/site --screenshots /tmp/shots

The site is served on 127.0.0.1 and Chromium resolves every other host to nothing, so
the check fails if MathJax (or anything it needs) still came from a CDN. For every page
with formulas it checks that each `arithmatex` element now holds MathJax output
(`mjx-container`) and no raw TeX, and that the server answered every request (the
MathJax fonts included) without a 404. Needs `chromium` (Debian: `apt-get install
chromium`) and the `docs` extra. Exit status 0 when all formulas rendered.
"""

import argparse
import functools
import http.server
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-dev-shm-usage",
    # no internet: every host but the local server resolves to nothing
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--virtual-time-budget=20000",
]


def build(site: pathlib.Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT,
        env=env,
        check=True,
    )


class _Handler(http.server.SimpleHTTPRequestHandler):
    log: list = []

    def log_request(self, code="-", size="-"):
        self.log.append((self.path, int(code) if str(code).isdigit() else code))


def serve(site: pathlib.Path):
    handler = functools.partial(_Handler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no Chromium found: apt-get install chromium")


def render(url: str, screenshot: pathlib.Path | None = None) -> str:
    browser = chromium()
    with tempfile.TemporaryDirectory() as profile:
        flags = [*FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180
        ).stdout
        if screenshot is not None:
            subprocess.run(
                [browser, *flags, f"--screenshot={screenshot}", "--window-size=1280,1600", url],
                capture_output=True,
                timeout=180,
            )
    return dom


ARITH = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.S)


def check_page(dom: str) -> tuple[int, list[str]]:
    """(number of formulas, problems) of one rendered page."""
    problems = []
    formulas = ARITH.findall(dom)
    for _, inner in formulas:
        if "<mjx-container" not in inner:
            problems.append(f"not rendered: {inner[:80]!r}")
        elif "\\(" in inner or "\\[" in inner:
            problems.append(f"raw TeX left: {inner[:80]!r}")
    return len(formulas), problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=pathlib.Path, help="build into this folder (default: a temporary one)")
    parser.add_argument("--no-build", action="store_true", help="check an already built --site")
    parser.add_argument(
        "--screenshots", type=pathlib.Path, help="save a screenshot of each page with formulas"
    )
    args = parser.parse_args(argv)
    site = args.site or pathlib.Path(tempfile.mkdtemp()) / "site"
    if not args.no_build:
        build(site)
    pages = sorted(p for p in site.rglob("index.html") if 'class="arithmatex"' in p.read_text())
    if not pages:
        print("no page with formulas found", file=sys.stderr)
        return 1
    server = serve(site)
    port = server.server_address[1]
    failed = False
    total = 0
    try:
        for page in pages:
            rel = page.parent.relative_to(site).as_posix()
            url = f"http://127.0.0.1:{port}/{rel + '/' if rel != '.' else ''}"
            shot = None
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                shot = args.screenshots / f"{rel.replace('/', '_') or 'index'}.png"
            n, problems = check_page(render(url, shot))
            total += n
            print(f"{rel or '.'}: {n} formulas, {len(problems)} problems")
            for p in problems[:5]:
                print("   ", p)
            failed |= bool(problems) or n == 0
    finally:
        server.shutdown()
    missing = sorted({path for path, code in _Handler.log if code == 404})
    fonts = [path for path, code in _Handler.log if code == 200 and path.endswith(".woff")]
    if missing:
        print("404s:", *missing[:10], sep="\n    ")
        failed = True
    if not fonts:
        print("no MathJax font was loaded from the site")
        failed = True
    print(
        f"{'FAILED' if failed else 'OK'}: {total} formulas on {len(pages)} pages, {len(fonts)} font loads, offline"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
