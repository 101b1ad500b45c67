"""Basic layers, each with forward and backward. Activations are
channels-last (B, H, W, C); weights keep PyTorch's shapes so state dicts
move between the two unchanged.

Initialisation follows PyTorch's defaults (uniform +-1/sqrt(fan_in) for
Linear and Conv2d, N(0, 1) for Embedding, ones/zeros for GroupNorm)."""
from __future__ import annotations

import numpy as np

from . import ops as F
from .module import Module, Parameter, grad_enabled

DTYPE = np.float32


def _uniform(rng: np.random.Generator, bound: float, shape) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape).astype(DTYPE)


def _rng(rng) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


class Linear(Module):
    """y = x @ W.T + b over the last axis; W: (out, in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None):
        rng = _rng(rng)
        bound = 1.0 / np.sqrt(in_features)
        self.weight = Parameter(_uniform(rng, bound, (out_features, in_features)))
        self.bias = Parameter(_uniform(rng, bound, (out_features,))) if bias else None
        self._x = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        # One GEMM per sample (axis 0), not one for the whole batch: a row's
        # rounding then never depends on what else is in the batch.
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])
        y = x3 @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        self._x = x3.reshape(-1, x.shape[-1]) if grad_enabled() else None
        return y.reshape(*x.shape[:-1], -1)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        g2 = grad.reshape(-1, grad.shape[-1])
        self.weight.grad += g2.T @ self._x
        if self.bias is not None:
            self.bias.grad += g2.sum(axis=0)
        dx = g2 @ self.weight.data
        shape = grad.shape[:-1] + (self._x.shape[-1],)
        self._x = None
        return dx.reshape(shape)


class Conv2d(Module):
    """2-D convolution through im2col + GEMM, tiled (engine/nn/ops.py).
    Weight (out, in, k, k).

    Backward: dW from im2col of the cached padded input, rebuilt tile by tile;
    dx for stride 1 as the transposed convolution (the same tiled kernel on
    the padded output gradient with the flipped kernel), for stride > 1
    through col2im."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, rng=None):
        rng = _rng(rng)
        k = kernel_size
        bound = 1.0 / np.sqrt(in_channels * k * k)
        self.weight = Parameter(_uniform(rng, bound, (out_channels, in_channels, k, k)))
        self.bias = Parameter(_uniform(rng, bound, (out_channels,))) if bias else None
        self.k, self.stride, self.padding = k, stride, padding
        self._cache = None
        self._precomputed_matrix = None

    def _build_precomputed(self) -> None:
        self._precomputed_matrix = np.ascontiguousarray(self._live_matrix())

    def _drop_precomputed(self) -> None:
        self._precomputed_matrix = None

    def _live_matrix(self) -> np.ndarray:
        w = self.weight.data
        return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])

    def _weight_matrix(self) -> np.ndarray:
        """(out, in, ky, kx) -> (ky*kx*in, out), matching im2col's (ky, kx, c) order."""
        if self._precomputed_matrix is not None and not grad_enabled():
            return self._precomputed_matrix
        return self._live_matrix()

    def _pointwise(self) -> bool:
        return self.k == 1 and self.stride == 1 and self.padding == 0

    def forward(self, x: np.ndarray) -> np.ndarray:
        B, H, W, C = x.shape
        k, s, p = self.k, self.stride, self.padding
        bias = self.bias.data if self.bias is not None else None
        if self._pointwise():
            self._cache = x if grad_enabled() else None
            return F.pointwise_forward(x, self._weight_matrix(), bias)
        Ho, Wo = F.conv_out_size(H, k, s, p), F.conv_out_size(W, k, s, p)
        xp = F.pad_hw(x, p, fresh=True)
        self._cache = xp if grad_enabled() else None
        return F.conv_forward(xp, self._weight_matrix(), bias, k, s, Ho, Wo)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        xp = self._cache
        self._cache = None
        B, Ho, Wo, O = grad.shape
        k, s, p = self.k, self.stride, self.padding
        C = xp.shape[-1]
        if self.bias is not None:
            self.bias.grad += grad.reshape(-1, O).sum(axis=0)
        if self._pointwise():
            g2 = grad.reshape(-1, O)
            self.weight.grad += F.matmul_tn_rows(g2, xp.reshape(-1, C)).reshape(O, C, 1, 1)
            return F.pointwise_forward(grad, self.weight.data.reshape(O, C), None)
        dw = F.conv_weight_grad(xp, grad, k, s)  # (k*k*C, O)
        self.weight.grad += dw.reshape(k, k, C, O).transpose(3, 2, 0, 1)
        H, W = xp.shape[1] - 2 * p, xp.shape[2] - 2 * p
        if s == 1 and 2 * p == k - 1:
            # dx = conv(grad, W flipped in space with in/out swapped), same padding
            w_t = self.weight.data[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(-1, C)
            return F.conv_forward(F.pad_hw(grad, k - 1 - p), w_t, None, k, 1, H, W)
        dcols = (grad.reshape(-1, O) @ self._weight_matrix().T).reshape(B, Ho, Wo, k, k, C)
        return F.col2im(dcols, H, W, s, p)


class GroupNorm(Module):
    """GroupNorm over channels-last input; `silu=True` fuses the SiLU that
    follows it in diffusers' blocks (same parameters, one pass fewer)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups, self.eps = num_groups, eps
        self.weight = Parameter(np.ones(num_channels, DTYPE))
        self.bias = Parameter(np.zeros(num_channels, DTYPE))
        self._cache = None

    def forward(self, x: np.ndarray, silu: bool = False) -> np.ndarray:
        y, cache = F.group_norm_forward(x, self.weight.data, self.bias.data, self.num_groups, self.eps, silu)
        self._cache = cache if grad_enabled() else None
        return y

    def backward(self, grad: np.ndarray) -> np.ndarray:
        dx, dgamma, dbeta = F.group_norm_backward(grad, self._cache)
        self._cache = None
        self.weight.grad += dgamma
        self.bias.grad += dbeta
        return dx


class SiLU(Module):
    def __init__(self):
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        sig = F.sigmoid(x)
        self._cache = (x, sig) if grad_enabled() else None
        return x * sig

    def backward(self, grad: np.ndarray) -> np.ndarray:
        x, sig = self._cache
        self._cache = None
        return F.silu_backward(grad, x, sig)


class Dropout(Module):
    """Inverted dropout, active only in training mode with gradients on."""

    def __init__(self, p: float = 0.0, rng=None):
        self.p = float(p)
        self.rng = _rng(rng)
        self._mask = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not (self.training and self.p > 0 and grad_enabled()):
            self._mask = None
            return x
        keep = (self.rng.random(x.shape) >= self.p).astype(x.dtype) / (1.0 - self.p)
        self._mask = keep
        return x * keep

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad if self._mask is None else grad * self._mask


class Embedding(Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, rng=None):
        self.weight = Parameter(_rng(rng).standard_normal((num_embeddings, embedding_dim)).astype(DTYPE))
        self._idx = None

    def forward(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        n = self.weight.data.shape[0]
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"Embedding index out of range [0, {n - 1}]: {idx.min()}..{idx.max()}")
        self._idx = idx if grad_enabled() else None
        return self.weight.data[idx]

    def backward(self, grad: np.ndarray) -> None:
        np.add.at(self.weight.grad, self._idx, grad)
        self._idx = None
