import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax
import pytest


@pytest.fixture
def key():
    return jax.random.key(0)
