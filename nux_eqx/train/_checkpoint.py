"""Training checkpoints: flow + optimizer state + best flow + RNG key + step + history.

One file, written with [`nux_eqx.save`][] (a JSON header, then Equinox's serialised
leaves; atomic: temporary file, fsync, rename), so a run killed at any moment leaves
either the previous checkpoint or the new one, never a torn file. The file gets the
user's umask, like any file the user creates.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray, PyTree

from .._flow import AbstractFlow
from .._serialise import CheckpointError, load, read_header, save

KIND = "nux_eqx-training-checkpoint"


def _state_tree(flow, opt_state, best, key_data) -> dict:
    return {"flow": flow, "opt_state": opt_state, "best": best, "key": key_data}


def save_checkpoint(
    path: str | os.PathLike,
    *,
    flow: AbstractFlow,
    opt_state: PyTree,
    key: PRNGKeyArray,
    step: int,
    history: dict,
    best: AbstractFlow | None = None,
    config: dict | None = None,
) -> None:
    """Write a training checkpoint atomically.

    **Arguments:**

    - `path`: the file.
    - `flow`, `opt_state`: the training state after `step` steps.
    - `key`: the run's base PRNG key (step `s` uses `fold_in(key, s)`).
    - `step`: the number of completed steps.
    - `history`: the JSON-serialisable history so far.
    - `best`: the best flow by validation loss, or `None`.
    - `config`: JSON-serialisable settings that must match when resuming.
    """
    key_data = jax.random.key_data(key)
    extra = {
        "kind": KIND,
        "step": int(step),
        "history": history,
        "config": config or {},
        "key_impl": str(jax.random.key_impl(key)),
        "has_best": best is not None,
    }
    save(path, _state_tree(flow, opt_state, best, key_data), extra=extra)


def read_checkpoint_info(path: str | os.PathLike) -> dict:
    """Read a training checkpoint's header: `step`, `history`, `config` (no arrays).

    Raises [`nux_eqx.CheckpointError`][] for a file that is not a training checkpoint.
    """
    header = read_header(path)
    extra = header.get("extra") or {}
    if extra.get("kind") != KIND:
        raise CheckpointError(
            f"{path} is a nux_eqx checkpoint but not a training checkpoint (no optimizer state); "
            "load it with `nux_eqx.load`."
        )
    return extra


def load_checkpoint(
    path: str | os.PathLike, *, flow: AbstractFlow, opt_state: PyTree, key: PRNGKeyArray | None = None
) -> dict[str, Any]:
    """Load a training checkpoint written by [`save_checkpoint`][] (or by `fit`).

    **Arguments:**

    - `path`: the file.
    - `flow`: an INITIALISED flow of the same architecture (the structure to load into).
    - `opt_state`: an optimizer state of the same structure (`optimizer.init(params)`).
    - `key`: any PRNG key of the same implementation (default `jax.random.key(0)`).

    **Returns:** a dict with `flow`, `opt_state`, `best` (or `None`), `key`, `step`,
    `history`, `config`. A truncated, corrupt or foreign file raises
    [`nux_eqx.CheckpointError`][] and changes nothing.
    """
    info = read_checkpoint_info(path)
    key = jax.random.key(0) if key is None else key
    key_data = jnp.zeros_like(jax.random.key_data(key))
    best_like = flow if info.get("has_best") else None
    tree = load(path, _state_tree(flow, opt_state, best_like, key_data))
    impl = info.get("key_impl")
    try:
        loaded_key = (
            jax.random.wrap_key_data(tree["key"], impl=impl)
            if impl
            else jax.random.wrap_key_data(tree["key"])
        )
    except (ValueError, TypeError):
        loaded_key = jax.random.wrap_key_data(tree["key"])
    return {
        "flow": tree["flow"],
        "opt_state": tree["opt_state"],
        "best": tree["best"],
        "key": loaded_key,
        "step": int(info["step"]),
        "history": info.get("history") or {},
        "config": info.get("config") or {},
    }
