"""Array kernels shared by the layers: im2col/col2im, fused GroupNorm+SiLU,
scratch buffers and a two-way batch split.

Activations are channels-last, (B, H, W, C): im2col rows are then contiguous
runs of C floats, the conv is one GEMM with a (k*k*C, C_out) weight matrix,
and GroupNorm, attention and linear layers need no transposes.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .module import grad_enabled

# ---------------------------------------------------------------------------
# Scratch buffers. In inference (no_grad) a conv's im2col matrix is dead once
# its GEMM is done, so all layers share one grow-only buffer per role: no page
# faults from fresh 50 MB allocations on every step. With gradients on, every
# buffer is fresh because backward still needs it.
# ---------------------------------------------------------------------------
_shared = threading.local()


def scratch(role: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    if grad_enabled():
        return np.empty(shape, dtype)
    bufs = getattr(_shared, "bufs", None)
    if bufs is None:
        bufs = _shared.bufs = {}
    size = int(np.prod(shape))
    key = (role, np.dtype(dtype))
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


# ---------------------------------------------------------------------------
# Two-way split over the batch. NumPy's element-wise loops run on one core but
# release the GIL, so halves of a large batch run side by side on the second
# core; small arrays are not worth the hand-off.
# ---------------------------------------------------------------------------
_THREADS = max(1, min(2, int(os.environ.get("DIGITGEN_THREADS", os.cpu_count() or 1))))
_pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="digitgen-split") if _THREADS > 1 else None
_SPLIT_MIN_ELEMENTS = 1 << 18


def split_batch(fn, batch: int, elements: int) -> None:
    """Call fn(slice) over the batch, in two halves on two threads when the
    work is large enough. fn must write only into its own slice."""
    if _pool is None or batch < 2 or elements < _SPLIT_MIN_ELEMENTS:
        fn(slice(0, batch))
        return
    mid = batch // 2
    other = _pool.submit(fn, slice(mid, batch))
    fn(slice(0, mid))
    other.result()


# ---------------------------------------------------------------------------
# im2col / col2im (channels-last)
# ---------------------------------------------------------------------------
def conv_out_size(n: int, k: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - k) // stride + 1


def pad_hw(x: np.ndarray, pad: int, role: str = "pad") -> np.ndarray:
    """Zero-pad H and W of (B, H, W, C)."""
    if pad == 0:
        return x
    B, H, W, C = x.shape
    xp = scratch(role, (B, H + 2 * pad, W + 2 * pad, C), x.dtype)

    def fill(s):
        xp[s, :pad] = 0
        xp[s, -pad:] = 0
        xp[s, pad:-pad, :pad] = 0
        xp[s, pad:-pad, -pad:] = 0
        xp[s, pad:-pad, pad:-pad] = x[s]

    split_batch(fill, B, xp.size)
    return xp


def im2col(x: np.ndarray, k: int, stride: int, pad: int, role: str = "cols") -> np.ndarray:
    """(B, H, W, C) -> (B, Ho, Wo, k, k, C): each output pixel's receptive field,
    ordered (ky, kx, c) so the copy moves contiguous runs of C floats."""
    B, H, W, C = x.shape
    Ho, Wo = conv_out_size(H, k, stride, pad), conv_out_size(W, k, stride, pad)
    xp = pad_hw(x, pad)
    cols = scratch(role, (B, Ho, Wo, k, k, C), x.dtype)
    # sliding_window_view is a strided view (B, H', W', C, k, k); no copy yet.
    windows = sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    windows = windows[:, :Ho, :Wo].transpose(0, 1, 2, 4, 5, 3)
    split_batch(lambda s: np.copyto(cols[s], windows[s]), B, cols.size)
    return cols


def col2im(cols: np.ndarray, H: int, W: int, stride: int, pad: int) -> np.ndarray:
    """Adjoint of im2col: scatter-add (B, Ho, Wo, k, k, C) back to (B, H, W, C)."""
    B, Ho, Wo, k, _, C = cols.shape
    xp = np.zeros((B, H + 2 * pad, W + 2 * pad, C), cols.dtype)
    for ky in range(k):
        for kx in range(k):
            xp[:, ky : ky + stride * Ho : stride, kx : kx + stride * Wo : stride] += cols[:, :, :, ky, kx]
    return xp[:, pad : pad + H, pad : pad + W]


# ---------------------------------------------------------------------------
# SiLU and GroupNorm (+ optional fused SiLU)
# ---------------------------------------------------------------------------
def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1
    np.reciprocal(out, out=out)
    return out


def silu_backward(grad: np.ndarray, x: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """d/dx [x*s(x)] = s * (1 + x * (1 - s))."""
    g = 1 - sig
    g *= x
    g += 1
    g *= sig
    g *= grad
    return g


def group_norm_forward(x, gamma, beta, groups: int, eps: float, silu: bool):
    """x: (B, ..., C) channels-last. Returns (y, cache).

    Statistics in two passes (mean, then centred squares): as accurate as
    PyTorch's Welford in float32 for activations with a large mean."""
    B, C = x.shape[0], x.shape[-1]
    Cg = C // groups
    xg = x.reshape(B, -1, groups, Cg)
    n = xg.shape[1] * Cg
    xhat = np.empty_like(xg)
    rstd = np.empty((B, 1, groups, 1), x.dtype)
    y = np.empty_like(xg)
    sig = np.empty_like(xg) if silu else None
    pre = np.empty_like(xg) if (silu and grad_enabled()) else None
    g = gamma.reshape(groups, Cg)
    b = beta.reshape(groups, Cg)

    def run(s):
        xs = xg[s]
        mean = xs.sum(axis=1).sum(axis=-1)[:, None, :, None] / n  # (b,1,G,1)
        xc = np.subtract(xs, mean, out=xhat[s])
        sq = np.multiply(xc, xc, out=y[s])
        var = sq.sum(axis=1).sum(axis=-1)[:, None, :, None] / n
        r = 1.0 / np.sqrt(var + eps)
        rstd[s] = r
        xc *= r  # xhat
        ys = np.multiply(xc, g, out=y[s])
        ys += b
        if silu:
            if pre is not None:
                pre[s] = ys
            sg = sigmoid(ys, out=sig[s])
            ys *= sg

    split_batch(run, B, xg.size)
    cache = (xhat, rstd, g, pre, sig, x.shape)
    return y.reshape(x.shape), cache


def group_norm_backward(grad, cache):
    """Returns (dx, dgamma, dbeta)."""
    xhat, rstd, g, pre, sig, shape = cache
    B, _, groups, Cg = xhat.shape
    n = xhat.shape[1] * Cg
    dy = grad.reshape(xhat.shape)
    if sig is not None:
        dy = silu_backward(dy, pre, sig)
    dgamma = np.einsum("bngc,bngc->gc", dy, xhat).reshape(-1)
    dbeta = dy.sum(axis=(0, 1)).reshape(-1)
    dxhat = dy * g
    mean_d = dxhat.sum(axis=1).sum(axis=-1)[:, None, :, None] / n
    mean_dx = np.einsum("bngc,bngc->bg", dxhat, xhat)[:, None, :, None] / n
    dx = dxhat - mean_d
    dx -= xhat * mean_dx
    dx *= rstd
    return dx.reshape(shape), dgamma, dbeta
