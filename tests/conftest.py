import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax
import pytest


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_caches():
    # Long xdist workers that keep every compiled check_flow function segfaulted inside
    # XLA:CPU compilation late in CI dry runs; start each test module with empty caches.
    jax.clear_caches()
    yield
