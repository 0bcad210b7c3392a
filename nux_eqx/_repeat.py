"""`Repeat`: a scan-over-layers container for deep stacks of identical blocks."""

import contextlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray, PyTree, Shaped

from ._context import ONLY_UNINITIALISED, capturing, child_scope, loop_body
from ._flow import AbstractContainer, AbstractFlow, ShapeError, cannot_sample, with_shapes
from ._maths import batch_keys


def _first_difference(a: str, b: str, width: int = 60) -> str:
    i = next((k for k, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
    lo = max(0, i - width)
    return f"...{a[lo : i + width]}... vs ...{b[lo : i + width]}..."


def _stack(blocks: list[AbstractFlow]) -> AbstractFlow:
    """Stack the array leaves of `n` structurally identical blocks along a new axis 0."""
    parts = [eqx.partition(b, eqx.is_array) for b in blocks]
    dyn0, static0 = parts[0]
    s_leaves0, s_def0 = jax.tree.flatten(static0)
    d_leaves0, d_def0 = jax.tree.flatten(dyn0)
    for i, (dyn, static) in enumerate(parts[1:], start=1):
        s_leaves, s_def = jax.tree.flatten(static)
        try:
            same = s_def == s_def0 and len(s_leaves) == len(s_leaves0)
            same = same and all(bool(u == v) for u, v in zip(s_leaves, s_leaves0))
        except Exception:  # noqa: BLE001 - static values that cannot be compared
            same = False
        if not same:
            raise ValueError(
                f"Repeat: after init, block {i} differs from block 0 in its static (non-array) "
                f"parts, so the blocks cannot be stacked and scanned: "
                f"{_first_difference(str(s_def0), str(s_def))}. Repeat needs blocks that differ "
                "only in their array values; use `Sequential` for blocks whose init sets static "
                "fields from data or random numbers."
            )
        d_leaves, d_def = jax.tree.flatten(dyn)
        shapes0 = [(a.shape, a.dtype) for a in d_leaves0]
        shapes = [(a.shape, a.dtype) for a in d_leaves]
        if d_def != d_def0 or shapes != shapes0:
            raise ValueError(
                f"Repeat: after init, the parameters of block {i} do not have the shapes of block 0 "
                f"({shapes} vs {shapes0}); Repeat needs identical blocks. Use `Sequential` instead."
            )
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[p[0] for p in parts])
    return eqx.combine(stacked, static0)


class Repeat(AbstractContainer):
    """`n` copies of one block, run with `jax.lax.scan` over their stacked parameters.

    The scan-over-layers form of `Sequential(*[block] * n)`: a deep stack of identical
    blocks (Glow steps, say) is traced and compiled once, not `n` times, so compile time
    stays flat as `n` grows. Forward runs the blocks in order, reverse in reverse order;
    contributions sum; the key is split into one key per block, as `Sequential` does.

    `nux_eqx.init` unrolls the `n` blocks in Python, so each block's data-dependent init
    (`ActNorm`) sees the previous block's output and each block gets its own key; their
    array leaves are then stacked along a new leading axis. The blocks must differ only in
    their array values (their static parts must be equal) and must preserve shape. With
    the same key, `nux_eqx.init(Repeat(block, n), ...)` gives the parameters of
    `nux_eqx.init(Sequential(*[block] * n), ...)`.

    During [`nux_eqx.capture`][] (and so in `check_flow`) the blocks run in an unrolled
    Python loop, so every leaf layer is recorded as `blocks[i]...`.

    Speed on XLA:CPU: a convolution's *weight gradient* runs ~100x slower inside a loop
    than outside it. So on the CPU backend the scanned blocks are traced inside
    [`nux_eqx.nn.loop_body`][], where [`nux_eqx.nn.Conv2d`][] computes the same
    convolution as a matmul over image patches: a scanned Glow then trains about as fast
    per step as the unrolled one (11 vs 11-13 ms on digits, K=4; 71 ms with XLA's
    convolution in the loop), while its compile time stays flat in `n`
    (`benchmarks/glow_depth.py`).

    **Arguments:**

    - `block`: the (un-initialised) block to repeat, e.g. `GlowBlock(64)`.
    - `n`: the number of copies.
    - `unroll`: passed to `jax.lax.scan` (how many blocks per loop iteration; `True`
      unrolls fully, and then convolutions keep XLA's form). Default 1.

    !!! example

        ```python
        import jax
        import nux_eqx as nux

        x = jax.random.normal(jax.random.key(0), (64, 4))
        block = nux.Sequential(nux.ActNorm(), nux.Coupling(hidden_layer_sizes=(16,)), nux.Reverse())
        flow = nux.init(nux.Sequential(nux.Repeat(block, 6), nux.UnitGaussianPrior()), x,
                        key=jax.random.key(1))
        print(flow[0].block.layers[0].b.shape)      # (6, 4): one ActNorm bias per block, stacked
        print(len(flow[0].blocks()))                # 6: the blocks, unstacked
        print(nux.log_prob(flow, x[0]).shape)       # ()
        ```
    """

    block: AbstractFlow
    n: int = eqx.field(static=True)
    unroll: int | bool = eqx.field(static=True)

    def __init__(self, block: AbstractFlow, n: int, *, unroll: int | bool = 1):
        if not isinstance(block, AbstractFlow):
            raise TypeError(
                f"Repeat: block must be a flow (an AbstractFlow), got {type(block).__name__}. "
                "Did you pass a class instead of an instance?"
            )
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Repeat: n must be a positive int, got {n!r}.")
        if not isinstance(unroll, bool) and (not isinstance(unroll, int) or unroll < 1):
            raise ValueError(f"Repeat: unroll must be a positive int or a bool, got {unroll!r}.")
        self.block = block
        self.n = n
        self.unroll = unroll

    # ---- the stacked blocks ------------------------------------------------------

    def _block(self, i: int) -> AbstractFlow:
        """Block `i` as an ordinary (unstacked) flow.

        Concrete parameters are sliced eagerly even inside a trace, so the blocks that
        `children()` and `nux_eqx.capture` hand out hold no tracers."""
        params, static = eqx.partition(self.block, eqx.is_array)
        with jax.ensure_compile_time_eval():
            params = jax.tree.map(lambda a: a[i], params)
        return eqx.combine(params, static)

    def blocks(self) -> tuple[AbstractFlow, ...]:
        """**Returns:** the `n` blocks, unstacked (the template `n` times before init)."""
        if not self.is_initialised:
            return (self.block,) * self.n
        return tuple(self._block(i) for i in range(self.n))

    def children(self):
        return tuple((f"blocks[{i}]", b) for i, b in enumerate(self.blocks()))

    def _run(
        self, x: Array, reverse: bool, keys: PRNGKeyArray | None, cond: PyTree, stop: int
    ) -> tuple[Array, Array]:
        """Run blocks `0 .. stop - 1` (in reverse order when `reverse`)."""
        total = jnp.zeros((), x.dtype)
        if stop == 0:
            return x, total
        if capturing():
            for i in reversed(range(stop)) if reverse else range(stop):
                with child_scope(f"blocks[{i}]"):
                    x, c = self._block(i)(x, reverse, key=None if keys is None else keys[i], cond=cond)
                total = total + c
            return x, total
        params, static = eqx.partition(self.block, eqx.is_array)
        if stop < self.n:
            params = jax.tree.map(lambda a: a[:stop], params)
        xs = (params, None if keys is None else keys[:stop])

        looped = not (self.unroll is True or (not isinstance(self.unroll, bool) and self.unroll >= stop))

        def body(carry, inp):
            x, total = carry
            p, k = inp
            with loop_body() if looped else contextlib.nullcontext():
                z, c = eqx.combine(p, static)(x, reverse, key=k, cond=cond)
            return (z.astype(x.dtype), total + c.astype(total.dtype)), None

        (x, total), _ = jax.lax.scan(body, (x, total), xs, length=stop, reverse=reverse, unroll=self.unroll)
        return x, total

    # ---- the flow protocol -------------------------------------------------------

    def transform(
        self, x: Shaped[Array, "..."], reverse: bool, *, key: PRNGKeyArray | None, cond: PyTree
    ) -> tuple[Shaped[Array, "..."], Shaped[Array, ""]]:
        keys = batch_keys(key, self.n)
        return self._run(x, reverse, keys, cond, self.n)

    def init_and_push(self, x_batch, *, key, cond=None):
        template = self._block(0) if self.is_initialised else self.block
        kept = self.is_initialised and ONLY_UNINITIALISED.get()  # init(..., only_uninitialised=True)
        keys = jr.split(key, self.n)
        z, blocks = x_batch, []
        for i, k in enumerate(keys):
            b, z_next = (self._block(i) if kept else template).init_and_push(z, key=k, cond=cond)
            if z_next.shape != z.shape or z_next.dtype != z.dtype:
                raise ShapeError(
                    f"Repeat needs a block that preserves shape and dtype (it scans the blocks); "
                    f"block {i} ({type(b).__name__}) maps {z.shape[1:]} {z.dtype} to "
                    f"{z_next.shape[1:]} {z_next.dtype}. Use `Sequential` for shape-changing stacks."
                )
            blocks.append(b)
            z = z_next
        out = eqx.tree_at(lambda s: s.block, self, _stack(blocks))
        return with_shapes(out, x_batch.shape[1:], z.shape[1:]), z

    def children_can_sample(self) -> bool:
        return self.block.can_sample()

    def sample_and_log_prob(self, key, *, cond=None, temperature=1.0):
        # As `Sequential`: the last block samples; the others run in reverse.
        if not self.can_sample():
            raise cannot_sample(self)
        last = self.n - 1
        k_p, k_rest = jr.split(key)
        with child_scope(f"blocks[{last}]"):
            x, log_q = self._block(last).sample_and_log_prob(k_p, cond=cond, temperature=temperature)
        x, c = self._run(x, True, jr.split(k_rest, self.n), cond, last)
        return x, log_q + c
