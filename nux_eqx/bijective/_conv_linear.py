"""Linear bijections on images: `OneByOneConvLDU`, `OneByOneConvLU`, `LocalDense` and the
FFT-based `CircularConv` (NuX's `affine.py` and `conv.py`)."""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, Float

from .._flow import AbstractBijection, NonTrainable, ShapeError
from .._maths import depth_to_space, initial_matrix, random_orthogonal, space_to_depth
from .._types import Cond, Image, Key, Scalar
from ._linear import ldu_apply, ldu_init, unit_lower, unit_upper


def _check_images(name: str, x_batch: Array) -> tuple[int, int, int]:
    if x_batch.ndim != 4:
        raise ShapeError(
            f"{name} takes (h, w, c) images (channels last), got examples of shape "
            f"{tuple(x_batch.shape[1:])}; for vectors use AffineDense, AffineLDU or AffineSVD."
        )
    h, w, c = (int(s) for s in x_batch.shape[1:])
    return h, w, c


def _pair(name: str, arg: str, value) -> tuple[int, int]:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        value = (value, value)
    ok = (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 1 for v in value)
    )
    if not ok:
        raise ValueError(f"{name}: {arg} must be a pair of positive ints (kh, kw) or one int, got {value!r}.")
    return int(value[0]), int(value[1])


class OneByOneConvLDU(AbstractBijection):
    """A 1x1 convolution in LDU form: [`nux_eqx.AffineLDU`][] on the channels of every pixel.

    `z[i, j] = L diag(exp(log_d)) U x[i, j]` with unit-lower `L` and unit-upper `U` built
    from flat parameters (row-major strict triangles). The contribution is
    `h * w * sum(log_d)`; reverse runs two triangular solves. `L` and `U` start at
    `N(0, 0.01^2)` entries and `log_d` at zero, as in NuX.
    """

    L: Float[Array, " n_off"] | None = None
    log_d: Float[Array, " c"] | None = None
    U: Float[Array, " n_off"] | None = None

    def init(self, x_batch, *, key, cond=None):
        _, _, c = _check_images("OneByOneConvLDU", x_batch)
        return eqx.tree_at(
            lambda s: (s.L, s.log_d, s.U), self, ldu_init(key, c, x_batch.dtype), is_leaf=lambda v: v is None
        )

    def transform(self, x: Image, reverse: bool, *, key: Key, cond: Cond) -> tuple[Image, Scalar]:
        h, w, c = x.shape
        Z = ldu_apply(self.L, self.log_d, self.U, x.reshape(h * w, c).T, reverse)
        return Z.T.reshape(h, w, c), jnp.sum(self.log_d) * (h * w)


class OneByOneConvLU(AbstractBijection):
    """Glow's 1x1 convolution in LU form: `z[i, j] = W x[i, j]` with
    `W = P L (U + diag(sign * exp(log_s)))`.

    `P` is a permutation and `sign` the signs of the diagonal; both are FIXED at init
    (stored in [`nux_eqx.NonTrainable`][], never trained). `L` (unit-lower) and `U`
    (strictly upper) are built from flat parameters (row-major strict triangles) and
    `log_s` is learned. As in Glow, `W` starts as a random rotation, factorised as
    `P L U`. The contribution is `h * w * sum(log_s)`; reverse undoes `P` and runs two
    triangular solves, so no matrix is inverted.
    """

    perm: NonTrainable | None = None
    """`P` as an index vector: `(P y)[i] = y[perm[i]]`."""
    sign: NonTrainable | None = None
    L: Float[Array, " n_off"] | None = None
    U: Float[Array, " n_off"] | None = None
    log_s: Float[Array, " c"] | None = None

    def __init__(self):
        self.perm = self.sign = self.L = self.U = self.log_s = None

    def init(self, x_batch, *, key, cond=None):
        _, _, c = _check_images("OneByOneConvLU", x_batch)
        W0 = random_orthogonal(key, c, dtype=x_batch.dtype)
        p, low, up = jsl.lu(W0)  # W0 = p @ low @ up
        perm = jnp.argmax(p, axis=1).astype(jnp.int32)
        s = jnp.diag(up)
        rows_l, cols_l = np.tril_indices(c, -1)
        rows_u, cols_u = np.triu_indices(c, 1)
        return eqx.tree_at(
            lambda m: (m.perm, m.sign, m.L, m.U, m.log_s),
            self,
            (
                NonTrainable(perm),
                NonTrainable(jnp.sign(s)),
                low[rows_l, cols_l],
                up[rows_u, cols_u],
                jnp.log(jnp.abs(s)),
            ),
            is_leaf=lambda v: v is None,
        )

    def _factors(self):
        c = self.log_s.shape[0]
        L = unit_lower(self.L, c)
        Ud = (
            unit_upper(self.U, c)
            - jnp.eye(c, dtype=self.U.dtype)
            + jnp.diag(self.sign.get() * jnp.exp(self.log_s))
        )
        return self.perm.get(), L, Ud

    def weight(self) -> Float[Array, "c c"]:
        """**Returns:** the `c x c` matrix `W = P L (U + diag(sign * exp(log_s)))`."""
        perm, L, Ud = self._factors()
        return (L @ Ud)[perm]

    def transform(self, x: Image, reverse: bool, *, key: Key, cond: Cond) -> tuple[Image, Scalar]:
        h, w, c = x.shape
        X = x.reshape(h * w, c).T
        perm, L, Ud = self._factors()
        if reverse:
            Y = X[jnp.argsort(perm)]  # P^T z
            Y = jsl.solve_triangular(L, Y, lower=True, unit_diagonal=True)
            Z = jsl.solve_triangular(Ud, Y, lower=False)
        else:
            Z = (L @ (Ud @ X))[perm]
        return Z.T.reshape(h, w, c), jnp.sum(self.log_s) * (h * w)


class LocalDense(AbstractBijection):
    """A dense map over non-overlapping `kh x kw` patches (NuX's `LocalDense`).

    Each patch is flattened to a vector of `c * kh * kw` values (index
    `(i * kw + j) * c + k` for pixel `(i, j)` of the patch and channel `k`, the order of
    [`nux_eqx.Squeeze`][] for 2x2), multiplied by one learned `(c kh kw) x (c kh kw)`
    matrix `W`, and put back. This generalises the 1x1 convolution to patches. The
    contribution is `(h / kh) * (w / kw) * log|det W|`; reverse solves with `W`.

    With `dilation=(dh, dw)` (NuX's dilated squeeze) the pixels of a patch are `dh` rows
    and `dw` columns apart (pixel `(i, j)` of the patch at offset `(i dh, j dw)`), so
    the map mixes pixels further apart; the image is tiled by blocks of
    `(kh dh) x (kw dw)` pixels, each holding `dh dw` interleaved patches. `dilation=(1, 1)`
    is the plain patch map. `kh * dh` must divide `h` and `kw * dw` must divide `w`.

    **Arguments:**

    - `filter_shape`: the patch size `(kh, kw)` (or one int for a square patch).
    - `init`: `"identity"` (NuX: `W = I`) or `"rotation"` (a random orthogonal `W`, which
      mixes within patches from the start; default).
    - `dilation`: the spacing `(dh, dw)` of a patch's pixels (or one int; default
      `(1, 1)`, as NuX).
    """

    W: Float[Array, "d d"] | None = None
    filter_shape: tuple[int, int] = eqx.field(static=True, default=(2, 2))
    w_init: Literal["identity", "rotation"] = eqx.field(static=True, default="rotation")
    dilation: tuple[int, int] = eqx.field(static=True, default=(1, 1))

    def __init__(
        self,
        filter_shape: tuple[int, int] = (2, 2),
        init: Literal["identity", "rotation"] = "rotation",
        *,
        dilation: tuple[int, int] = (1, 1),
    ):
        self.filter_shape = _pair("LocalDense", "filter_shape", filter_shape)
        self.dilation = _pair("LocalDense", "dilation", dilation)
        if init not in ("identity", "rotation"):
            raise ValueError(f"LocalDense: init must be 'identity' or 'rotation', got {init!r}.")
        self.w_init = init
        self.W = None

    def init(self, x_batch, *, key, cond=None):
        h, w, c = _check_images("LocalDense", x_batch)
        kh, kw = self.filter_shape
        dh, dw = self.dilation
        if h % (kh * dh) or w % (kw * dw):
            raise ShapeError(
                f"LocalDense: the patch size {self.filter_shape} times the dilation {self.dilation} "
                f"({kh * dh}, {kw * dw}) must divide the image size ({h}, {w}); choose a filter_shape "
                "and dilation that fit, or crop/pad the images."
            )
        d = c * kh * kw
        W = initial_matrix(self.w_init, key, d, x_batch.dtype)
        return eqx.tree_at(lambda s: s.W, self, W, is_leaf=lambda v: v is None)

    def transform(self, x: Image, reverse: bool, *, key: Key, cond: Cond) -> tuple[Image, Scalar]:
        kh, kw = self.filter_shape
        dh, dw = self.dilation
        p = space_to_depth(x, kh, kw, dh, dw)
        hp, wp, d = p.shape
        P = p.reshape(hp * wp, d).T
        Z = jnp.linalg.solve(self.W, P) if reverse else self.W @ P
        z = depth_to_space(Z.T.reshape(hp, wp, d), kh, kw, dh, dw)
        return z, jnp.linalg.slogdet(self.W)[1] * (hp * wp)


class CircularConv(AbstractBijection):
    """An invertible circular (periodic) convolution, computed with the FFT
    (Karami et al. 2019, "Invertible convolutional flow").

    `z[p, q] = sum_{i, j} k[i, j] @ x[(p - i + kh // 2) % h, (q - j + kw // 2) % w]`: a
    convolution with a `(kh, kw, c, c)` kernel `k` (output channel first) centred on the
    pixel, wrapping around the borders. The 2-D DFT block-diagonalises it: at each
    frequency `f` the channels are multiplied by the `c x c` matrix `K_hat(f)` (the DFT
    of the zero-padded kernel), so the contribution is exactly
    `sum_f log|det K_hat(f)|` and reverse solves `K_hat(f) X_hat(f) = Z_hat(f)` per
    frequency. Real inputs make `K_hat` conjugate-symmetric, so only the `rfft2` half of
    the frequencies is computed.

    NuX's `CircularConv` ran the DE-convolution in the forward (x -> z) direction; here
    forward is the convolution. Wrap it in [`nux_eqx.Invert`][] for NuX's direction.

    The kernel starts near the identity (the identity at the centre tap plus
    `N(0, 0.02^2)` noise on every entry), so `K_hat(f)` is well conditioned. The filter
    must fit inside the image.

    **Arguments:**

    - `filter_size`: the kernel size `(kh, kw)` (or one int for a square kernel).
    """

    kernel: Float[Array, "kh kw c c"] | None = None
    filter_size: tuple[int, int] = eqx.field(static=True, default=(3, 3))

    def __init__(self, filter_size: tuple[int, int] = (3, 3)):
        self.filter_size = _pair("CircularConv", "filter_size", filter_size)
        self.kernel = None

    def init(self, x_batch, *, key, cond=None):
        h, w, c = _check_images("CircularConv", x_batch)
        kh, kw = self.filter_size
        if kh > h or kw > w:
            raise ShapeError(
                f"CircularConv: the filter {self.filter_size} is larger than the image ({h}, {w}); "
                "use a filter_size no larger than the image."
            )
        eye = (
            jnp.zeros((kh, kw, c, c), x_batch.dtype).at[kh // 2, kw // 2].set(jnp.eye(c, dtype=x_batch.dtype))
        )
        kernel = eye + 0.02 * jr.normal(key, (kh, kw, c, c), x_batch.dtype)
        return eqx.tree_at(lambda s: s.kernel, self, kernel, is_leaf=lambda v: v is None)

    def kernel_fft(self, h: int, w: int) -> Array:
        """**Returns:** `K_hat`, the `rfft2` of the zero-padded, centred kernel: a complex
        array of shape `(h, w // 2 + 1, c, c)`."""
        kh, kw, c, _ = self.kernel.shape
        K = jnp.zeros((h, w, c, c), self.kernel.dtype).at[:kh, :kw].set(self.kernel)
        K = jnp.roll(K, (-(kh // 2), -(kw // 2)), axis=(0, 1))
        return jnp.fft.rfft2(K, axes=(0, 1))

    def transform(self, x: Image, reverse: bool, *, key: Key, cond: Cond) -> tuple[Image, Scalar]:
        h, w, c = x.shape
        K_hat = self.kernel_fft(h, w)
        X_hat = jnp.fft.rfft2(x, axes=(0, 1))  # (h, w // 2 + 1, c)
        if reverse:
            Z_hat = jnp.linalg.solve(K_hat, X_hat[..., None])[..., 0]
        else:
            Z_hat = jnp.einsum("hwoi,hwi->hwo", K_hat, X_hat)
        z = jnp.fft.irfft2(Z_hat, s=(h, w), axes=(0, 1)).astype(x.dtype)
        # Column j of the rfft half stands for itself and its mirror w - j, except j = 0
        # and (w even) j = w / 2, which are their own mirrors.
        wf = w // 2 + 1
        weights = np.full((wf,), 2.0)
        weights[0] = 1.0
        if w % 2 == 0:
            weights[-1] = 1.0
        logabs = jnp.linalg.slogdet(K_hat)[1]  # (h, wf)
        return z, jnp.sum(logabs * jnp.asarray(weights, logabs.dtype))


OnebyOneConvLDU = OneByOneConvLDU
