"""Print `tests/slow_tests.txt` from the per-test times of full runs.

    NUX_TEST_TIMES=/tmp/times.log python -m pytest -n 2 -m "slow or not slow"
    python tests/slow_list.py /tmp/times.log > tests/slow_tests.txt

A test goes to the slow tier when it took longer than `--limit` seconds (registry cases:
`--registry-limit`, their default-constructor cases `--defaults-limit`), unless it is in
`KEEP`.
Several logs may be given, oldest first: a test's time is its time in the last log that
ran it (a run of the default tier alone keeps the slow tests' earlier times).
"""

import argparse
import pathlib

# Kept in the default run whatever they take: a newcomer's first pages and the checks
# that guard what CI must never miss.
KEEP = {
    "tests/test_docs.py::test_page_runs[index.md]",
    "tests/test_docs.py::test_page_runs[getting-started.md]",
    "tests/test_docs.py::test_page_runs[faq.md]",
    "tests/test_docs.py::test_page_runs[tutorials/from-nux.md]",
    "tests/test_examples.py::test_custom_layers_pass_check_flow",
    "tests/test_docs_layers.py::test_layer_table_is_current",
    # one numerical check per family whose other tests are all long
    "tests/test_continuous.py::test_hutchinson_is_unbiased",
    "tests/test_naf.py::test_inverse_accuracy[0.5]",
    "tests/test_residual.py::test_density_integrates_to_one",
    "tests/test_registry.py::test_check_flow[defaults-BlockAutoregressiveNetwork]",
    "tests/test_registry.py::test_check_flow[defaults-ResidualFlow]",
}

HEADER = """\
# Tests excluded from the default run (`python -m pytest -n 2`); `-m slow` runs them.
# Measured on a 2-core machine like CI's, each took longer than {limit:g} s (registry cases:
# {registry_limit:g} s, default-constructor cases {defaults_limit:g} s). The default run keeps
# nearly every layer's default-constructor check_flow case, the cheap variants and the
# cheap tests of every module, within CI's ~25-minute budget.
#
# Regenerate after a full run (see tests/slow_list.py), then read the diff.
# Format: seconds measured, then the test id.
"""


def times(paths) -> dict[str, float]:
    out: dict[str, float] = {}
    for path in paths:
        seen: dict[str, float] = {}
        for line in pathlib.Path(path).read_text().splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3:
                seen[parts[2]] = seen.get(parts[2], 0.0) + float(parts[0])  # setup + call + teardown
        out.update(seen)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+", help="files written by NUX_TEST_TIMES=...")
    p.add_argument("--limit", type=float, default=12.0)
    p.add_argument("--registry-limit", type=float, default=8.0)
    p.add_argument("--defaults-limit", type=float, default=25.0)
    a = p.parse_args(argv)
    print(
        HEADER.format(limit=a.limit, registry_limit=a.registry_limit, defaults_limit=a.defaults_limit), end=""
    )
    for nodeid, t in sorted(times(a.logs).items()):
        registry = nodeid.startswith("tests/test_registry.py::")
        limit = a.registry_limit if registry else a.limit
        if registry and "[defaults-" in nodeid:
            limit = a.defaults_limit
        if nodeid not in KEEP and t > limit:
            print(f"{t:6.1f} {nodeid}")


if __name__ == "__main__":
    main()
