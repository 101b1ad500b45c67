"""The operators, as plain NumPy: convolution via im2col + GEMM, GroupNorm
(with an optional fused SiLU), SiLU, and their backward passes.

Activations are channels-last, (B, H, W, C): im2col rows are then contiguous
runs of C floats, the conv is one GEMM with a (k*k*C, C_out) weight matrix,
and GroupNorm, attention and linear layers need no transposes. Each kernel
says what to compute on one tile or one slice of the batch; how the work is
cut and which thread runs it is engine/nn/runtime.py's business.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .module import grad_enabled
from .runtime import for_each_tile, run_parallel, scratch, split_batch, sum_over_tiles, threads


# ---------------------------------------------------------------------------
# im2col / col2im (channels-last)
# ---------------------------------------------------------------------------
def conv_out_size(n: int, k: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - k) // stride + 1


def pointwise_forward(x: np.ndarray, w_mat: np.ndarray, bias) -> np.ndarray:
    """1x1 convolution (B, H, W, C) @ (C, O), on the same tiles as conv_forward."""
    B, H, W, C = x.shape
    O = w_mat.shape[1]
    y = np.empty((B, H, W, O), np.result_type(x, w_mat))

    def tile(b0, b1, h0, h1):
        out = y[b0:b1, h0:h1].reshape(b1 - b0, -1, O)
        np.matmul(x[b0:b1, h0:h1].reshape(b1 - b0, -1, C), w_mat, out=out)
        if bias is not None:
            out += bias

    for_each_tile(tile, B, H, W, C, x.itemsize)
    return y


def matmul_tn_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a.T @ b for tall a (M, K) and b (M, N): partial products over row
    blocks on the engine's threads, summed."""
    M = a.shape[0]
    n = min(threads(), max(1, M * a.shape[1] * b.shape[1] // (1 << 20)))
    edges = np.linspace(0, M, n + 1).astype(int)
    parts = run_parallel(lambda r: a[r[0]:r[1]].T @ b[r[0]:r[1]], list(zip(edges[:-1], edges[1:])))
    return sum(parts[1:], parts[0])


def pad_hw(x: np.ndarray, pad: int, fresh: bool = False) -> np.ndarray:
    """Zero-pad H and W of (B, H, W, C); `fresh`: the caller caches it for backward."""
    if pad == 0:
        return x
    B, H, W, C = x.shape
    xp = scratch("pad", (B, H + 2 * pad, W + 2 * pad, C), x.dtype, fresh=fresh)

    def fill(s):
        xp[s, :pad] = 0
        xp[s, -pad:] = 0
        xp[s, pad:-pad, :pad] = 0
        xp[s, pad:-pad, -pad:] = 0
        xp[s, pad:-pad, pad:-pad] = x[s]

    split_batch(fill, B, xp.size)
    return xp


def windows(xp: np.ndarray, k: int, stride: int, Ho: int, Wo: int) -> np.ndarray:
    """Strided view (B, Ho, Wo, k, k, C) of every output pixel's receptive
    field in the padded input, ordered (ky, kx, c); no copy. (Built directly:
    sliding_window_view's checks cost more than a small conv at B=1.)"""
    B, C = xp.shape[0], xp.shape[3]
    sb, sh, sw, sc = xp.strides
    shape, strides = (B, Ho, Wo, k, k, C), (sb, sh * stride, sw * stride, sh, sw, sc)
    if xp.flags.c_contiguous:
        return np.ndarray(shape, xp.dtype, buffer=xp, strides=strides)
    return as_strided(xp, shape, strides, writeable=False)


def conv_forward(xp: np.ndarray, w_mat: np.ndarray, bias, k: int, stride: int, Ho: int, Wo: int) -> np.ndarray:
    """im2col + GEMM, tile by tile: each tile's im2col block is copied into a
    per-thread buffer and multiplied while it is still in cache.
    xp: padded input (B, Hp, Wp, C); w_mat: (k*k*C, O). -> (B, Ho, Wo, O)"""
    B = xp.shape[0]
    K, O = w_mat.shape
    win = windows(xp, k, stride, Ho, Wo)
    y = np.empty((B, Ho, Wo, O), xp.dtype)

    def tile(b0, b1, h0, h1):
        src = win[b0:b1, h0:h1]                        # (b, h, Wo, k, k, C) view
        cols = scratch("cols", src.shape, xp.dtype)    # im2col block, in cache
        np.copyto(cols, src)
        out = y[b0:b1, h0:h1].reshape(b1 - b0, -1, O)
        np.matmul(cols.reshape(b1 - b0, -1, K), w_mat, out=out)  # one GEMM per sample
        if bias is not None:
            out += bias

    for_each_tile(tile, B, Ho, Wo, K, xp.itemsize)
    return y


def conv_weight_grad(xp: np.ndarray, grad: np.ndarray, k: int, stride: int) -> np.ndarray:
    """dW = sum over pixels of im2col(x)^T @ grad, with im2col rebuilt tile by
    tile (cheaper than keeping a 9x copy of every activation for backward).
    -> (k*k*C, O)"""
    B, Ho, Wo, O = grad.shape
    win = windows(xp, k, stride, Ho, Wo)
    K = k * k * xp.shape[-1]

    def tile(acc, b0, b1, h0, h1):
        src = win[b0:b1, h0:h1]
        cols = scratch("cols", src.shape, xp.dtype)
        np.copyto(cols, src)
        part = scratch("dw", (K, O), xp.dtype)
        np.matmul(cols.reshape(-1, K).T, grad[b0:b1, h0:h1].reshape(-1, O), out=part)
        acc += part

    return sum_over_tiles(tile, lambda: np.zeros((K, O), xp.dtype), B, Ho, Wo, K, xp.itemsize)


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


_CHUNK = 1 << 16  # elements; NumPy's float32 exp runs ~3x faster on blocks that stay in cache


def silu_inplace(y: np.ndarray, sig_out: np.ndarray | None = None) -> None:
    """y <- y * sigmoid(y) on a contiguous array, block by block; with
    sig_out, also keep sigmoid(y) (for backward)."""
    flat = y.reshape(-1)
    sig_flat = sig_out.reshape(-1) if sig_out is not None else None
    tmp = scratch("silu", (min(_CHUNK, flat.size),), y.dtype)
    for i in range(0, flat.size, _CHUNK):
        ys = flat[i:i + _CHUNK]
        t = tmp[:ys.size] if sig_flat is None else sig_flat[i:i + _CHUNK]
        np.negative(ys, out=t)
        np.exp(t, out=t)
        t += 1
        if sig_flat is None:   # y / (1 + exp(-y))
            np.divide(ys, t, out=ys)
        else:
            np.reciprocal(t, out=t)
            ys *= t


def silu_backward(grad: np.ndarray, x: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """d/dx [x*s(x)] = s * (1 + x * (1 - s))."""
    g = 1 - sig
    g *= x
    g += 1
    g *= sig
    g *= grad
    return g


_ONES: dict = {}


def sum_rows(a: np.ndarray) -> np.ndarray:
    """(b, N, C) -> (b, C): the sum over N as one GEMV per sample (several
    times faster than ndarray.sum over a middle axis, and per sample, so a
    row's result never depends on the batch)."""
    key = (a.shape[1], a.dtype)
    ones = _ONES.get(key)
    if ones is None:
        ones = _ONES[key] = np.ones((1, a.shape[1]), a.dtype)
    return np.matmul(ones, a)[:, 0, :]


def _per_channel(v: np.ndarray, groups: int, C: int) -> np.ndarray:
    """(b, G) group statistics -> (b, 1, C), so element-wise kernels broadcast
    along whole channel rows (inner loops of C floats, not C/G)."""
    return np.repeat(v, C // groups, axis=1)[:, None, :]


def group_norm_forward(x, gamma, beta, groups: int, eps: float, silu: bool):
    """x: (B, ..., C) channels-last. Returns (y, cache); with silu=True,
    y = SiLU(GroupNorm(x)). Statistics in two passes (mean, then centred
    squares): as accurate as PyTorch's in float32 for activations with a
    large mean."""
    B, C = x.shape[0], x.shape[-1]
    x3 = x.reshape(B, -1, C)
    N = x3.shape[1]
    count = N * (C // groups)
    train = grad_enabled()
    y = np.empty_like(x3)
    xhat = np.empty_like(x3) if train else None      # cached for backward
    sig = np.empty_like(x3) if (silu and train) else None
    rstd_c = np.empty((B, 1, C), x.dtype)

    def run(s):
        xs, ys = x3[s], y[s]
        b = xs.shape[0]
        mean = sum_rows(xs).reshape(b, groups, -1).sum(axis=-1) / count              # (b, G)
        xc = np.subtract(xs, _per_channel(mean, groups, C), out=ys)                  # centred, in y
        var = np.einsum("bnc,bnc->bc", xc, xc).reshape(b, groups, -1).sum(axis=-1) / count
        r = _per_channel(1.0 / np.sqrt(var + eps), groups, C).astype(x.dtype)
        rstd_c[s] = r
        if not train:  # y = xhat*gamma + beta (then SiLU) in cache-sized blocks
            _affine_silu_blocks(ys, r * gamma, beta, silu)
            return
        np.multiply(xc, r, out=xhat[s])
        xc *= r * gamma
        xc += beta                                                                   # y = xhat*gamma + beta
        if silu:
            silu_inplace(ys, sig[s])

    split_batch(run, B, x3.size)
    cache = (xhat, rstd_c, gamma, beta, sig, groups, x.shape) if train else None
    return y.reshape(x.shape), cache


def _affine_silu_blocks(y3: np.ndarray, scale: np.ndarray, shift: np.ndarray, silu: bool) -> None:
    """y3 (b, N, C) <- y3 * scale + shift, then SiLU if asked; scale (b, 1, C),
    shift (C,). Block by block (whole samples, or row ranges of one sample),
    so the later passes find the data in cache. Same operations per element
    as the unfused sequence, so the same bits."""
    b, N, C = y3.shape
    rows = max(1, _CHUNK // C)
    if N <= rows:
        per = max(1, rows // N)
        blocks = [(slice(i, i + per), slice(0, N)) for i in range(0, b, per)]
    else:
        blocks = [(slice(i, i + 1), slice(n, n + rows)) for i in range(b) for n in range(0, N, rows)]
    for sb, nb in blocks:
        ys = y3[sb, nb]  # contiguous: whole samples, or a row range of one
        ys *= scale[sb]
        ys += shift
        if silu:
            silu_inplace(ys)


def group_norm_backward(grad, cache):
    """Returns (dx, dgamma, dbeta)."""
    xhat, rstd_c, gamma, beta, sig, groups, shape = cache
    B, N, C = xhat.shape
    count = N * (C // groups)
    g3 = grad.reshape(B, N, C)
    dx = np.empty_like(xhat)
    dgamma = np.zeros((B, C), xhat.dtype)
    dbeta = np.zeros((B, C), xhat.dtype)

    def run(s):
        xh, b = xhat[s], xhat[s].shape[0]
        dy = dx[s]  # work in the output buffer
        if sig is not None:  # through the SiLU: d/dy [y s(y)] = s (1 + y (1 - s)), y = xhat*gamma + beta
            np.multiply(xh, gamma, out=dy)
            dy += beta
            t = 1 - sig[s]
            t *= dy
            t += 1
            t *= sig[s]
            np.multiply(g3[s], t, out=dy)
        else:
            dy[...] = g3[s]
        dgamma[s] = np.einsum("bnc,bnc->bc", dy, xh)
        dbeta[s] = sum_rows(dy)
        # dxhat = dy * gamma; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), means per group
        m1 = (dbeta[s] * gamma).reshape(b, groups, -1).sum(axis=-1) / count
        m2 = (dgamma[s] * gamma).reshape(b, groups, -1).sum(axis=-1) / count
        dy *= gamma
        dy -= _per_channel(m1, groups, C)
        t = np.multiply(xh, _per_channel(m2, groups, C))
        dy -= t
        dy *= rstd_c[s]

    split_batch(run, B, xhat.size)
    return dx.reshape(shape), dgamma.sum(axis=0), dbeta.sum(axis=0)
