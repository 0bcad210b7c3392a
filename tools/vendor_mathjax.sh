#!/usr/bin/env bash
# Vendor MathJax into the docs, so the site renders formulas with no internet at build
# or view time: fetch the npm package `mathjax` (pinned) with `npm pack` and copy its
# TeX -> CommonHTML bundle and fonts into docs/javascripts/mathjax/ (committed).
# Rerun only to change the version; tools/check_docs_math.py checks the result.
set -euo pipefail
VERSION="${1:-3.2.2}"
cd "$(dirname "$0")/.."
dest=docs/javascripts/mathjax
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "mathjax@${VERSION}" >/dev/null && tar xzf mathjax-*.tgz)
rm -rf "$dest"
mkdir -p "$dest/output/chtml/fonts"
cp "$tmp/package/es5/tex-chtml.js" "$dest/"
cp -r "$tmp/package/es5/output/chtml/fonts/woff-v2" "$dest/output/chtml/fonts/"
cp "$tmp/package/LICENSE" "$dest/LICENSE"
echo "MathJax ${VERSION} (npm package mathjax, es5/tex-chtml.js and its woff-v2 fonts), vendored by tools/vendor_mathjax.sh" > "$dest/VERSION"
du -sh "$dest"
