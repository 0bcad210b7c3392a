"""`save` / `load`: checkpoints of flows on `eqx.tree_serialise_leaves`.

A checkpoint is one file: a one-line JSON header (format version, the flow's input shape
and dtype, and a description of every array leaf: path, shape, dtype), then Equinox's
serialised leaves. Writes are atomic (write a temporary file, fsync, rename), so a crash
never leaves a half-written checkpoint under the real name.
"""

import dataclasses
import io
import json
import os
import uuid
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from ._flow import AbstractFlow, init

FORMAT = "nux_eqx-checkpoint"
VERSION = 2  # 2: the header also describes every layer (type and static configuration)


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or was written for a different flow."""


def describe(tree: PyTree) -> list[list]:
    """Describe every array leaf of `tree` as `[path, shape, dtype]` (shape-dtype structs too)."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)
    )[0]:
        if isinstance(leaf, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
            out.append([jax.tree_util.keystr(path), list(leaf.shape), str(jnp.dtype(leaf.dtype))])
    return out


def _simple(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    return isinstance(v, (tuple, list)) and all(_simple(u) for u in v)


def describe_layers(tree: PyTree) -> list[list]:
    """Describe every flow inside `tree` as `[path, type name, static configuration]`.

    The configuration holds the static fields with simple values (shapes, kinds, sizes,
    masks...), so two flows with the same arrays but different layers or settings
    (`Reverse` vs `Identity`, another `alpha`) are told apart."""
    out: list[list] = []

    def visit(node, path):
        if isinstance(node, AbstractFlow):
            config = {}
            for f in dataclasses.fields(node):
                if f.metadata.get("static", False):
                    v = getattr(node, f.name, None)
                    if _simple(v):
                        config[f.name] = json.loads(json.dumps(v))
            out.append([path or "flow", type(node).__name__, config])
            for f in dataclasses.fields(node):
                if not f.metadata.get("static", False):
                    visit(getattr(node, f.name, None), f"{path}.{f.name}")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                visit(v, f"{path}[{i}]")
        elif isinstance(node, dict):
            for k in sorted(node, key=str):
                visit(node[k], f"{path}[{k!r}]")
        elif dataclasses.is_dataclass(node) and not isinstance(node, type):
            for f in dataclasses.fields(node):
                visit(getattr(node, f.name, None), f"{path}.{f.name}")

    visit(tree, "")
    return out


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically: a temporary file in the same folder, fsync, rename.

    The file gets the permissions of any file the user creates (`0o666` less the umask),
    like `open(path, "wb")` would give it; the temporary file is created with them
    (`O_CREAT | O_EXCL`, so the kernel applies the umask), never `0o600` as
    `tempfile.mkstemp` makes it. A crash leaves the previous file or the new one, never a
    torn one, and the rename is made durable by syncing the folder."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex[:12]}-{os.path.basename(path)}")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"atomic_write: cannot create a temporary file next to {path}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable (POSIX; a no-op where folders cannot be opened)
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def save(path: str | os.PathLike, flow: AbstractFlow, *, extra: dict | None = None) -> None:
    """Save an initialised flow to `path`, atomically.

    **Arguments:**

    - `path`: the file to write (its folder is created).
    - `flow`: an initialised flow (or any pytree of arrays and static metadata).
    - `extra`: optional JSON-serialisable metadata stored in the header.
    """
    if isinstance(flow, AbstractFlow) and not flow.is_initialised:
        raise CheckpointError("save: the flow is not initialised; there is nothing to save yet.")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "flow": type(flow).__name__,
        "in_shape": list(flow.in_shape) if isinstance(flow, AbstractFlow) else None,
        "dtype": _flow_dtype(flow),
        "leaves": describe(flow),
        "layers": describe_layers(flow),
        "extra": extra or {},
    }
    buf = io.BytesIO()
    buf.write(json.dumps(header).encode() + b"\n")
    eqx.tree_serialise_leaves(buf, flow)
    atomic_write(path, buf.getvalue())


def _flow_dtype(flow: PyTree) -> str:
    for leaf in jax.tree.leaves(flow):
        if eqx.is_inexact_array(leaf):
            return str(leaf.dtype)
    return str(jnp.dtype(jnp.result_type(float)))


def read_header(path: str | os.PathLike) -> dict:
    """Read a checkpoint's header (format, shapes, leaf description, extra metadata)."""
    try:
        with open(path, "rb") as f:
            line = f.readline()
        header = json.loads(line)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a nux_eqx checkpoint (unreadable header: {e}).") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a nux_eqx checkpoint.")
    if not isinstance(header.get("version"), int):
        raise CheckpointError(f"{path} has a malformed header (version {header.get('version')!r}).")
    if header["version"] > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer nux_eqx (checkpoint format {header['version']}, this "
            f"version reads up to {VERSION}); upgrade nux_eqx."
        )
    return header


def load(
    path: str | os.PathLike,
    like: PyTree,
    *,
    cond_like: PyTree = None,
) -> Any:
    """Load a checkpoint written by [`nux_eqx.save`][] into the structure of `like`.

    **Arguments:**

    - `path`: the checkpoint file.
    - `like`: a flow of the same architecture: initialised, or NOT initialised (the
      shapes are then rebuilt from the input shape stored in the checkpoint with
      `eqx.filter_eval_shape(nux_eqx.init, ...)`, so no data is needed).
    - `cond_like`: for a flow that needs an outer `cond` at init, one batched example
      of it (arrays or `jax.ShapeDtypeStruct`s with a leading batch axis of 1).

    **Returns:**

    The loaded flow. A checkpoint of another architecture raises `CheckpointError`
    naming the first difference; a truncated file raises `CheckpointError` too.
    """
    header = read_header(path)
    if isinstance(like, AbstractFlow) and not like.is_initialised:
        if header.get("in_shape") is None:
            raise CheckpointError(f"{path} holds no input shape; pass an initialised `like`.")
        x_like = jax.ShapeDtypeStruct((1, *header["in_shape"]), jnp.dtype(header["dtype"]))
        try:
            like = eqx.filter_eval_shape(
                lambda f, x, c: init(f, x, key=jax.random.key(0), cond=c), like, x_like, cond_like
            )
        except (ValueError, TypeError) as e:
            raise CheckpointError(
                f"{path} holds a flow for examples of shape {tuple(header['in_shape'])} ({header['dtype']}), "
                f"which `like` ({type(like).__name__}) cannot take: {e}"
            ) from e
    if "layers" in header:  # format 2
        for w, h in zip(describe_layers(like), header["layers"]):
            if w != h:
                raise CheckpointError(
                    f"{path} was saved from a different flow: at {h[0]} it holds {h[1]} {h[2]}, "
                    f"but `like` has {w[1]} {w[2]} at {w[0]}."
                )
    want = describe(like)
    have = header["leaves"]
    for i, (w, h) in enumerate(zip(want, have)):
        if w != h:
            raise CheckpointError(
                f"{path} was saved from a different flow: leaf {i} is {h[0]} {tuple(h[1])} {h[2]} in "
                f"the checkpoint but {w[0]} {tuple(w[1])} {w[2]} in `like`."
            )
    if len(want) != len(have):
        raise CheckpointError(
            f"{path} was saved from a different flow: it holds {len(have)} arrays, `like` has {len(want)}"
            + (
                f"; the first extra one is {(want if len(want) > len(have) else have)[min(len(want), len(have))][0]}."
                if want or have
                else "."
            )
        )
    with open(path, "rb") as f:
        f.readline()
        try:
            return eqx.tree_deserialise_leaves(f, like)
        except Exception as e:  # numpy raises several kinds on truncated data
            raise CheckpointError(f"{path} is truncated or corrupt: {e}") from e
