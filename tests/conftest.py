import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import gc
import pathlib

import jax
import pytest

_SLOW_LIST = pathlib.Path(__file__).with_name("slow_tests.txt")

# A worker whose resident memory has grown by this many bytes drops JAX's caches before
# its next test (see _bounded_memory): CI has 24 GiB for two workers.
_RSS_LIMIT = int(float(os.environ.get("NUX_TEST_RSS_STEP_GB", "3")) * 2**30)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: no bound
        return 0


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_caches():
    # Long xdist workers that keep every compiled check_flow function segfaulted inside
    # XLA:CPU compilation late in CI dry runs; start each test module with empty caches.
    jax.clear_caches()
    yield


_last_clear = [0]


@pytest.fixture(autouse=True)
def _bounded_memory():
    # Test modules with many cases (the registry) compile hundreds of functions in one
    # worker; a worker was killed mid-run in CI. Drop the caches when memory has grown by
    # _RSS_LIMIT since the last drop (freed memory is not always returned to the system,
    # so an absolute threshold would clear before every test once passed).
    rss = _rss()
    if rss > _last_clear[0] + _RSS_LIMIT:
        jax.clear_caches()
        gc.collect()
        _last_clear[0] = _rss()
    yield


def _measured_slow() -> set[str]:
    lines = _SLOW_LIST.read_text().splitlines() if _SLOW_LIST.exists() else []
    return {line.split(None, 1)[1] for line in lines if line.strip() and not line.startswith("#")}


@pytest.hookimpl(tryfirst=True)  # before `-m 'not slow'` deselects
def pytest_collection_modifyitems(config, items):
    # tests/slow_tests.txt: the tests measured to take long (tests/slow_list.py writes it)
    slow = _measured_slow()
    for item in items:
        if item.nodeid in slow:
            item.add_marker(pytest.mark.slow)


def pytest_runtest_logreport(report):
    # NUX_TEST_TIMES=path: append "seconds outcome nodeid" per test as it ends, to see where
    # a long run spends its time while it runs (tests/slow_list.py reads it). Under xdist
    # the controller sees every worker's report again (`report.node`): written once.
    path = os.environ.get("NUX_TEST_TIMES")
    if not path or getattr(report, "node", None) is not None:
        return
    if report.when == "call" or report.outcome == "failed" or report.duration >= 0.5:
        with open(path, "a") as f:  # setup/teardown too when long (a module fixture's run)
            f.write(f"{report.duration:.1f} {report.outcome} {report.nodeid}\n")
