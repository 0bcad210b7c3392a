"""Trace-time context: a `ContextVar` set for the duration of a `with` block (the
check_finite / capture / loop_body switches)."""

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def set_flag(var: contextvars.ContextVar, value: Any) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)
