"""diffusers' ResnetBlock2D, Downsample2D and Upsample2D (conv variants)."""
from __future__ import annotations

import numpy as np

from . import ops as F
from .layers import Conv2d, Dropout, GroupNorm, Linear, SiLU
from .module import Module, grad_enabled


class ResnetBlock2D(Module):
    """norm1 -> SiLU -> conv1 -> + time_emb_proj(SiLU(temb)) -> norm2 -> SiLU
    -> dropout -> conv2, plus a 1x1 conv_shortcut when channels change;
    output = (shortcut + h) / output_scale_factor.

    The SiLUs after norm1/norm2 are fused into the GroupNorm kernels; they have
    no parameters, so the state-dict keys are diffusers' own."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, groups: int = 32,
                 eps: float = 1e-6, dropout: float = 0.0, output_scale_factor: float = 1.0, rng=None):
        self.norm1 = GroupNorm(groups, in_channels, eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, rng=rng)
        self.time_emb_proj = Linear(temb_channels, out_channels, rng=rng) if temb_channels else None
        self.norm2 = GroupNorm(groups, out_channels, eps)
        self.dropout = Dropout(dropout, rng=rng)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, rng=rng)
        self.nonlinearity = SiLU()  # for temb; the feature-map SiLUs are fused
        self.conv_shortcut = Conv2d(in_channels, out_channels, 1, rng=rng) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: np.ndarray, temb: np.ndarray | None) -> np.ndarray:
        """x: (B, H, W, C_in), temb: (B, T) -> (B, H, W, C_out)"""
        h = self.conv1(self.norm1(x, silu=True))
        self._temb_used = self.time_emb_proj is not None and temb is not None
        if self._temb_used:
            h += self.time_emb_proj(self.nonlinearity(temb))[:, None, None, :]
        h = self.conv2(self.dropout(self.norm2(h, silu=True)))
        h += x if self.conv_shortcut is None else self.conv_shortcut(x)
        if self.output_scale_factor != 1.0:
            h /= self.output_scale_factor
        return h

    def backward(self, grad: np.ndarray):
        """Returns (dx, dtemb)."""
        if self.output_scale_factor != 1.0:
            grad = grad / self.output_scale_factor
        dx = grad if self.conv_shortcut is None else self.conv_shortcut.backward(grad)
        dh = self.norm2.backward(self.dropout.backward(self.conv2.backward(grad)))
        dtemb = None
        if self._temb_used:
            dtemb = self.nonlinearity.backward(self.time_emb_proj.backward(dh.sum(axis=(1, 2))))
        dx = dx + self.norm1.backward(self.conv1.backward(dh))
        return dx, dtemb


class Downsample2D(Module):
    """3x3 conv with stride 2 (diffusers' use_conv=True, padding=1)."""

    def __init__(self, channels: int, out_channels: int | None = None, padding: int = 1, rng=None):
        if padding != 1:
            raise NotImplementedError("Downsample2D: only downsample_padding=1 is supported")
        self.conv = Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding, rng=rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.conv(x)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return self.conv.backward(grad)


# Nearest x2 upsampling then a 3x3 conv equals, on each of the four output
# phases (row parity a, column parity b), a 2x2 conv of the low-resolution
# input: kernel rows (ky = 0, 1, 2) fall on input rows (i-1, i, i) for even
# output rows and (i, i, i+1) for odd ones. 2.25x fewer FLOPs than
# convolving the upsampled map.
def _phase_kernel(w: np.ndarray, parity: int, axis: int) -> np.ndarray:
    """Collapse a 3-tap kernel axis onto the two low-resolution taps of one
    output parity: even rows see (k0, k1 + k2), odd rows (k0 + k1, k2)."""
    k0, k1, k2 = (np.take(w, [i], axis=axis) for i in range(3))
    return np.concatenate([k0, k1 + k2] if parity == 0 else [k0 + k1, k2], axis=axis)


class Upsample2D(Module):
    """Nearest-neighbour x2 upsampling, then a 3x3 conv. In inference the
    pair runs as four 2x2 phase convolutions (see _phase_kernel); with
    gradients on it upsamples explicitly, so backward is the plain conv's."""

    def __init__(self, channels: int, out_channels: int | None = None, rng=None):
        self.conv = Conv2d(channels, out_channels or channels, 3, padding=1, rng=rng)
        self._precomputed_phases = None

    def _build_precomputed(self) -> None:
        self._precomputed_phases = self._phase_matrices()

    def _drop_precomputed(self) -> None:
        self._precomputed_phases = None

    def _phase_matrices(self) -> dict[tuple[int, int], np.ndarray]:
        """(a, b) -> the (2*2*C, O) matrix of output phase (row parity a, column parity b)."""
        w = self.conv.weight.data  # (O, C, 3, 3)
        return {
            (a, b): np.ascontiguousarray(
                _phase_kernel(_phase_kernel(w, a, axis=2), b, axis=3).transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))
            for a in (0, 1) for b in (0, 1)
        }

    def forward(self, x: np.ndarray) -> np.ndarray:
        B, H, W, C = x.shape
        if not grad_enabled():
            return self._phase_forward(x)
        up = np.broadcast_to(x[:, :, None, :, None, :], (B, H, 2, W, 2, C)).reshape(B, 2 * H, 2 * W, C)
        return self.conv(up)

    def _phase_forward(self, x: np.ndarray) -> np.ndarray:
        B, H, W, C = x.shape
        phases = self._precomputed_phases or self._phase_matrices()
        bias = self.conv.bias.data if self.conv.bias is not None else None
        xp = F.pad_hw(x, 1)
        y = np.empty((B, 2 * H, 2 * W, self.conv.weight.data.shape[0]), x.dtype)
        for (a, b), w_ab in phases.items():
            y[:, a::2, b::2] = F.conv_forward(xp[:, a:, b:], w_ab, bias, 2, 1, H, W)
        return y

    def backward(self, grad: np.ndarray) -> np.ndarray:
        g = self.conv.backward(grad)
        B, H2, W2, C = g.shape
        return g.reshape(B, H2 // 2, 2, W2 // 2, 2, C).sum(axis=(2, 4))
