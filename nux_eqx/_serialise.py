"""`save` / `load`: checkpoints of flows on `eqx.tree_serialise_leaves`.

A checkpoint is one file: a one-line JSON header (format version, the flow's input shape
and dtype, a description of every array leaf: path, shape, dtype, and the flow's
configuration: every module's class and field values, arrays as shapes), then Equinox's
serialised leaves. This is Equinox's "serialise with hyperparameters" recipe, made
generic: the configuration is read from the modules' dataclass fields, so `load(path)`
rebuilds any flow made of library classes without a skeleton. Writes are atomic (write a temporary file, fsync, rename), so a crash
never leaves a half-written checkpoint under the real name.
"""

import dataclasses
import functools
import importlib
import io
import json
import os
import types
import uuid
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from ._flow import AbstractFlow, init

FORMAT = "nux_eqx-checkpoint"
VERSION = 3  # 2: the header also describes every layer (type and static configuration)
# 3: a layer's description includes its transformer's (`Coupling`, `MaskedAutoregressive`),
#    and `Coupling.split` exists (before it, odd sizes transformed floor(d/2) features)
# Format 2 headers may also hold "tree" (the configuration `load(path)` rebuilds the flow
# from); older readers ignore it, and files without it load with a skeleton as before.

# `load(path)` without a skeleton imports the classes and functions a header names only
# from these packages (a checkpoint never runs code from elsewhere: no pickle).
TRUSTED = ("nux_eqx", "equinox", "jax", "jaxlib", "numpy", "optax", "diffrax", "math", "operator", "builtins")
# Public namespaces searched first, so a function is stored by a stable public name
# (`jax.nn:relu`, not `jax._src.nn.functions:relu`).
_PUBLIC = ("jax.nn", "jax.numpy", "jax.lax", "jax.scipy.special", "numpy", "math", "operator")


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
                    elif isinstance(v, AbstractFlow) and f.name != "template":
                        # a layer's transformer: its settings change the map, not the arrays
                        config[f.name] = describe_layers(v)[0][1:]
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

    The file holds the arrays and the flow's configuration (every layer's class and
    settings), so [`nux_eqx.load`][]`(path)` alone rebuilds a flow made of library layers.

    **Arguments:**

    - `path`: the file to write (its folder is created).
    - `flow`: an initialised flow (or any pytree of arrays and static metadata).
    - `extra`: optional JSON-serialisable metadata stored in the header.

    !!! example

        ```python
        import tempfile, pathlib
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (64, 3))
        flow = nux.init(nux.RealNVP(2, (16,)), x, key=jax.random.key(1))
        path = pathlib.Path(tempfile.mkdtemp()) / "flow.eqx"
        nux.save(path, flow)
        same = nux.load(path)                # no need to rebuild the architecture
        print(same.in_shape, nux.log_prob(same, x[0]).shape)   # (3,) ()
        ```
    """
    if isinstance(flow, AbstractFlow) and not flow.is_initialised:
        raise CheckpointError("save: the flow is not initialised; there is nothing to save yet.")
    tree, why_not = encode_tree(flow)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "flow": type(flow).__name__,
        "in_shape": list(flow.in_shape) if isinstance(flow, AbstractFlow) else None,
        "dtype": _flow_dtype(flow),
        "leaves": describe(flow),
        "layers": describe_layers(flow),
        "tree": tree,
        **({"tree_missing": why_not} if why_not else {}),
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


# --------------------------------------------------------------------------------------
# The flow's configuration: every module's class and fields, arrays as shapes.
# --------------------------------------------------------------------------------------


class _Unencodable(Exception):
    pass


try:  # Equinox's marker for unset wrapper attributes (see `dict_extra` below)
    from equinox._module._flatten import MISSING as _MISSING
except ImportError:  # pragma: no cover - another Equinox layout: no marker to restore
    _MISSING = None


def _name_of(obj) -> str:
    """`module:qualname` of a class or function, preferring a public namespace."""
    for modname in _PUBLIC:
        try:
            module = importlib.import_module(modname)
        except ImportError:  # pragma: no cover
            continue
        name = getattr(obj, "__name__", None)
        if name and getattr(module, name, None) is obj:
            return f"{modname}:{name}"
    modname, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not modname or not qualname or "<" in qualname:
        raise _Unencodable(f"{obj!r} is not importable by name (a lambda or a local function?)")
    try:
        found = _resolve(f"{modname}:{qualname}", trusted=None)
    except (ImportError, AttributeError) as e:
        raise _Unencodable(f"{obj!r} is not importable by name ({e})") from None
    if found is not obj:
        raise _Unencodable(f"{modname}:{qualname} does not name {obj!r}")
    return f"{modname}:{qualname}"


def _resolve(name: str, trusted: tuple[str, ...] | None):
    modname, _, qualname = name.partition(":")
    if trusted is not None and modname.split(".")[0] not in trusted:
        raise CheckpointError(
            f"the checkpoint names {name}, which is not a class or function of "
            f"{', '.join(trusted[:3])} or JAX (only those are imported when loading without a skeleton)"
        )
    obj = importlib.import_module(modname)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _encode(v, path: str, static: bool = False):
    """JSON description of a pytree node: enough to rebuild it with arrays as shapes."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return {"float": repr(v)}  # keeps nan / inf exact and tells 1.0 from 1
    if isinstance(v, eqx.Module):
        fields = {}
        for f in dataclasses.fields(v):
            if not hasattr(v, f.name):
                continue
            st = static or bool(f.metadata.get("static", False))
            fields[f.name] = _encode(getattr(v, f.name), f"{path}.{f.name}", st)
        out = {"module": _name_of(type(v)), "fields": fields}
        # Equinox keeps wrapper attributes (`__doc__`...) in some instances' `__dict__`,
        # unset ones as a MISSING marker; they are part of the pytree structure.
        names = {f.name for f in dataclasses.fields(v)}
        more = {k: u for k, u in vars(v).items() if k not in names}
        if more:
            out["dict_extra"] = {
                k: {"missing": True} if type(u).__name__ == "_Missing" else _encode(u, f"{path}.{k}", True)
                for k, u in more.items()
            }
        return out
    if isinstance(v, (jax.Array, jax.ShapeDtypeStruct)) and not static:
        if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            raise _Unencodable(f"{path} is a typed PRNG key array")
        return {"array": [list(v.shape), str(jnp.dtype(v.dtype))]}
    if isinstance(v, (np.ndarray, np.generic, jax.Array)):
        if static:  # a static array's values are part of the structure
            a = np.asarray(v)
            return {"ndarray": [a.tolist(), str(a.dtype), list(a.shape)], "scalar": isinstance(v, np.generic)}
        return {"nparray": [list(v.shape), str(v.dtype)], "scalar": isinstance(v, np.generic)}
    if isinstance(v, jax.tree_util.PyTreeDef):  # by an example tree of zeros (a recorded cond)
        return {"treedef": _encode(jax.tree.unflatten(v, [0] * v.num_leaves), path, True)}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):  # a frozen value object (static)
        return {
            "dataclass": _name_of(type(v)),
            "fields": {
                f.name: _encode(getattr(v, f.name), f"{path}.{f.name}", True) for f in dataclasses.fields(v)
            },
        }
    if isinstance(v, tuple) and hasattr(type(v), "_fields"):  # a NamedTuple (optax states)
        return {
            "namedtuple": _name_of(type(v)),
            "items": [_encode(u, f"{path}.{n}", static) for n, u in zip(type(v)._fields, v)],
        }
    if isinstance(v, tuple):
        return {"tuple": [_encode(u, f"{path}[{i}]", static) for i, u in enumerate(v)]}
    if isinstance(v, list):
        return {"list": [_encode(u, f"{path}[{i}]", static) for i, u in enumerate(v)]}
    if isinstance(v, dict):
        if not all(isinstance(k, (str, int)) for k in v):
            raise _Unencodable(f"{path} is a dict with keys other than str / int")
        return {"dict": [[k, _encode(u, f"{path}[{k!r}]", static)] for k, u in v.items()]}
    if isinstance(v, np.dtype) or (isinstance(v, type) and issubclass(v, np.generic)):
        return {"dtype": str(np.dtype(v))}
    if isinstance(v, functools.partial):
        return {
            "partial": [
                _encode(v.func, path, static),
                _encode(tuple(v.args), path, static),
                _encode(dict(v.keywords), path, static),
            ]
        }
    if isinstance(v, type):
        return {"type": _name_of(v)}
    if callable(v) and not isinstance(v, types.MethodType):
        return {"function": _name_of(v)}
    raise _Unencodable(f"{path} holds a {type(v).__name__} ({v!r:.60})")


def encode_tree(tree: PyTree) -> tuple[Any, str | None]:
    """The configuration `load(path)` rebuilds `tree` from, or `(None, why not)`."""
    try:
        return _encode(tree, "flow"), None
    except _Unencodable as e:
        return None, str(e)
    except Exception as e:  # never let describing the configuration break a save
        return None, f"it could not be described ({type(e).__name__}: {e})"


def decode_tree(obj, trusted: tuple[str, ...] = TRUSTED) -> PyTree:
    """Rebuild the tree `encode_tree` described, with `jax.ShapeDtypeStruct`s for arrays.

    Modules are rebuilt field by field (as `jax.tree_util.tree_unflatten` does), without
    calling `__init__`, so the result does not depend on the constructors' signatures."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if not isinstance(obj, dict) or len(obj) == 0:
        raise CheckpointError(f"malformed configuration entry {obj!r:.80}")
    if "float" in obj:
        return float(obj["float"])
    if "treedef" in obj:
        return jax.tree.structure(decode_tree(obj["treedef"], trusted))
    if "dataclass" in obj:
        cls = _resolve(obj["dataclass"], trusted)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise CheckpointError(f"{obj['dataclass']} is not a dataclass")
        return cls(**{k: decode_tree(u, trusted) for k, u in obj["fields"].items()})
    if "module" in obj:
        cls = _resolve(obj["module"], trusted)
        if not (isinstance(cls, type) and issubclass(cls, eqx.Module)):
            raise CheckpointError(f"{obj['module']} is not an Equinox module")
        names = {f.name for f in dataclasses.fields(cls)}
        stored = set(obj["fields"])
        if not stored <= names:
            raise CheckpointError(
                f"{obj['module']} has no field {sorted(stored - names)[0]!r} in this version of its "
                "library (the checkpoint was written by another version); pass a skeleton: "
                "`nux_eqx.load(path, like)`"
            )
        node = object.__new__(cls)
        for name, value in obj["fields"].items():
            object.__setattr__(node, name, decode_tree(value, trusted))
        # A field added since the checkpoint was written takes its class default: the
        # value that reproduces the behaviour of then (e.g. `Coupling.split`).
        for f in dataclasses.fields(cls):
            if f.name not in stored and f.default is not dataclasses.MISSING:
                object.__setattr__(node, f.name, f.default)
        for name, value in obj.get("dict_extra", {}).items():
            node.__dict__[name] = _MISSING if value == {"missing": True} else decode_tree(value, trusted)
        return node
    if "array" in obj:
        shape, dtype = obj["array"]
        return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))
    if "nparray" in obj:
        shape, dtype = obj["nparray"]
        a = np.zeros(shape, dtype)
        return a[()] if obj.get("scalar") else a
    if "ndarray" in obj:
        values, dtype, shape = obj["ndarray"]
        a = np.asarray(values, dtype).reshape(shape)
        return a[()] if obj.get("scalar") else a
    if "namedtuple" in obj:
        return _resolve(obj["namedtuple"], trusted)(*(decode_tree(u, trusted) for u in obj["items"]))
    if "tuple" in obj:
        return tuple(decode_tree(u, trusted) for u in obj["tuple"])
    if "list" in obj:
        return [decode_tree(u, trusted) for u in obj["list"]]
    if "dict" in obj:
        return {k: decode_tree(u, trusted) for k, u in obj["dict"]}
    if "dtype" in obj:
        return np.dtype(obj["dtype"])
    if "partial" in obj:
        func, args, kwargs = (decode_tree(u, trusted) for u in obj["partial"])
        return functools.partial(func, *args, **kwargs)
    if "type" in obj:
        return _resolve(obj["type"], trusted)
    if "function" in obj:
        return _resolve(obj["function"], trusted)
    raise CheckpointError(f"malformed configuration entry {obj!r:.80}")


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
    like: PyTree = None,
    *,
    cond_like: PyTree = None,
) -> Any:
    """Load a checkpoint written by [`nux_eqx.save`][].

    **Arguments:**

    - `path`: the checkpoint file.
    - `like`: optional. Without it the flow is rebuilt from the configuration stored in
      the file (for flows made of nux_eqx, Equinox and JAX classes; only those are
      imported). With it, the arrays are loaded into the structure of `like`: a flow of
      the same architecture, initialised or NOT initialised (the shapes are then rebuilt
      from the input shape stored in the checkpoint with
      `eqx.filter_eval_shape(nux_eqx.init, ...)`, so no data is needed). Pass `like` for
      flows with custom layers, and for checkpoints written before the configuration was
      stored.
    - `cond_like`: with an un-initialised `like` of a flow that needs an outer `cond` at
      init, one batched example of it (arrays or `jax.ShapeDtypeStruct`s with a leading
      batch axis of 1).

    **Returns:**

    The loaded flow. A checkpoint of another architecture raises `CheckpointError`
    naming the first difference; a truncated file raises `CheckpointError` too.

    !!! example

        ```python
        import tempfile, pathlib
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (64, 2))
        flow = nux.init(nux.NeuralSplineFlow(2, (16,)), x, key=jax.random.key(1))
        path = pathlib.Path(tempfile.mkdtemp()) / "nsf.eqx"
        nux.save(path, flow)

        loaded = nux.load(path)                       # rebuilt from the stored configuration
        skeleton = nux.NeuralSplineFlow(2, (16,))     # or: into a skeleton (custom layers)
        also = nux.load(path, skeleton)
        print(loaded(x[0])[0].shape, also(x[0])[0].shape)   # (2,) (2,)
        ```
    """
    if like is None:
        return _load_configured(path, read_header(path))
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
        _compare_layers(path, describe_layers(like), header["layers"], header["version"])
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


_TRANSFORMERS_RECORDED = 3  # the first format whose layer descriptions hold transformers


def _transformer_scale(config: dict) -> Any:
    """The affine scale of a layer's transformer in a layer description, if it has one."""
    transformer = config.get("transformer")
    return transformer[1].get("scale") if transformer else None


def _compare_layers(path, want: list, have: list, version: int) -> None:
    """Refuse a checkpoint whose layers differ from `like`'s (types and settings).

    A setting that a checkpoint of an older format did not record (a field added since,
    a transformer's settings before format 3) is not compared, except where its value
    in `like` did not exist then, so that the checkpoint cannot have used it."""
    for w, h in zip(want, have):
        w_config = w[2] if version >= VERSION else {k: v for k, v in w[2].items() if k in h[2]}
        if w[:2] != h[:2] or w_config != h[2]:
            hint = ""
            if w[1] == "Repeat" and h[1] != "Repeat":
                hint = (
                    " The ready-made RealNVP and NeuralSplineFlow scan their layers (one `Repeat`) "
                    "after nux_eqx 0.1; build `like` with `scan=False` for the unrolled layout, or "
                    "load without `like`: `nux_eqx.load(path)`."
                )
            elif (
                w[1] == h[1] == "MaskedAutoregressive"
                and {w[2].get("ordering"), h[2].get("ordering")} == {"sequential", "random"}
                and {k: v for k, v in w[2].items() if k != "ordering"}
                == {k: v for k, v in h[2].items() if k != "ordering"}
            ):
                option, order = (
                    ("random", "a random") if h[2]["ordering"] == "random" else ("data_first", "the data's")
                )
                hint = (
                    f" If it is a `MaskedAutoregressiveFlow`, its first layer generates the features in {order} "
                    f"order: build `like` with `ordering='{option}'`, or load without `like`: "
                    "`nux_eqx.load(path)`."
                )
            elif {w[1], h[1]} == {"Roll", "Permute"}:
                option = "random" if h[1] == "Permute" else "roll"
                hint = (
                    f" The checkpoint mixes the features between couplings with {h[1]}: build `like` "
                    f"with `permutation='{option}'`, or load without `like`: `nux_eqx.load(path)`."
                )
            raise CheckpointError(
                f"{path} was saved from a different flow: at {h[0]} it holds {h[1]} {h[2]}, "
                f"but `like` has {w[1]} {w[2]} at {w[0]}.{hint}"
            )
        if version < _TRANSFORMERS_RECORDED and _transformer_scale(w[2]) == "inverse_softplus":
            raise CheckpointError(
                f"{path} was written by an older nux_eqx (checkpoint format {version}), whose affine "
                f"layers had no 'inverse_softplus' scale, but `like` has one at {w[0]}: "
                "`MaskedAutoregressiveFlow` uses it by default after 0.1. Build `like` with "
                "`scale='tanh'` (the old default), or load without `like`: `nux_eqx.load(path)`."
            )


def _load_configured(path, header: dict) -> Any:
    tree = header.get("tree")
    if tree is None:
        why = header.get("tree_missing") or "it was written by a nux_eqx that did not store it"
        raise CheckpointError(
            f"{path} does not store its flow's configuration ({why}); pass a flow of the same "
            "architecture to load into: `nux_eqx.load(path, like)`."
        )
    try:
        like = decode_tree(tree)
    except (CheckpointError, ImportError, AttributeError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: cannot rebuild the flow from its stored configuration: {e}. Pass a flow of the "
            "same architecture to load into: `nux_eqx.load(path, like)`."
        ) from e
    return load(path, like)


def load_run(run_dir: str | os.PathLike) -> AbstractFlow:
    """Load the trained flow of a `nux-eqx train` run folder, or of `fit`'s `checkpoint_dir`.

    **Arguments:**

    - `run_dir`: the run folder (`runs/digits-glow-seed0`, holding `config.json` and
      `checkpoints/`), or a `checkpoint_dir` given to [`nux_eqx.train.fit`][].

    **Returns:**

    The final flow (`flow.eqx`: the best flow by validation loss, if there was
    validation); for a run that was interrupted before the end, the best flow (or the
    current one) of its last training checkpoint. No architecture needs to be given: it is
    stored in the files (runs of an older nux_eqx are rebuilt from `config.json`).

    !!! example

        ```python
        import tempfile
        import jax
        import nux_eqx as nux

        x = nux.data.toy_sample("8gaussians", 512, seed=0)
        run = tempfile.mkdtemp()
        flow, _ = nux.train.fit(nux.RealNVP(2, (16,)), x, key=jax.random.key(0), steps=5,
                                batch_size=64, checkpoint_dir=run, progress=False)
        again = nux.load_run(run)
        print(nux.log_prob(again, x[0]).shape)   # ()
        ```
    """
    run = os.fspath(run_dir)
    folder = os.path.join(run, "checkpoints")
    if not os.path.isdir(folder):
        folder = run
    final = os.path.join(folder, "flow.eqx")
    state = os.path.join(folder, "checkpoint.eqx")
    if os.path.exists(final):
        if read_header(final).get("tree") is not None:
            return load(final)
        return load(final, _run_skeleton(run, final))
    if os.path.exists(state):
        header = read_header(state)
        if header.get("tree") is None:
            why = header.get("tree_missing") or "written by an older nux_eqx"
            raise CheckpointError(
                f"{state} does not store its flow's configuration ({why}); load it "
                "with `nux_eqx.train.load_checkpoint(path, flow=..., opt_state=...)`."
            )
        tree = load(state)
        return tree["best"] if tree.get("best") is not None else tree["flow"]
    raise CheckpointError(
        f"{run} holds no trained flow (no checkpoints/flow.eqx or checkpoints/checkpoint.eqx): "
        "is it a `nux-eqx train` run folder or a `fit` checkpoint_dir?"
    )


def _run_skeleton(run: str, path: str) -> AbstractFlow:
    """The un-initialised flow of an older `nux-eqx train` run, from its `config.json`."""
    config_path = os.path.join(run, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointError(
            f"{path} does not store its flow's configuration and {run} has no config.json to rebuild it "
            "from; pass a flow of the same architecture: `nux_eqx.load(path, like)`."
        )
    with open(config_path) as f:
        config = json.load(f)
    from .cli import MODELS

    resolved = config.get("resolved") or {}
    split = types.SimpleNamespace(
        name=config.get("data"), shape=tuple(resolved.get("shape", ())), levels=resolved.get("levels")
    )
    if config.get("model") not in MODELS:
        raise CheckpointError(f"{run}/config.json names an unknown model {config.get('model')!r}.")
    spec = MODELS[config["model"]]  # a run without a stored configuration is from 0.1 or older
    return (spec.build_unrolled or spec.build)(split)
