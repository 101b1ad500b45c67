"""Module and Parameter: the bookkeeping every layer shares.

A layer is a `Module` whose `forward` caches what `backward` needs and whose
`Parameter`s hold their value (`.data`) and gradient (`.grad`) side by side.
Parameter names come from attribute names, in definition order, so a model
built like its diffusers twin has the same state-dict keys
("down_blocks.0.resnets.1.conv1.weight").
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import numpy as np

_state = threading.local()


def grad_enabled() -> bool:
    return getattr(_state, "grad", True)


@contextlib.contextmanager
def no_grad():
    """Inference mode: layers keep no activations for backward and may share
    scratch buffers (one forward at a time per thread)."""
    previous = grad_enabled()
    _state.grad = False
    try:
        yield
    finally:
        _state.grad = previous


class Parameter:
    __slots__ = ("data", "grad")

    def __init__(self, data: np.ndarray):
        self.data = data
        self.grad = np.zeros_like(data)

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    training = True
    precomputed = False  # see precompute_for_inference()

    # -- tree walking ------------------------------------------------------
    def children(self) -> Iterator[tuple[str, "Module"]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(prefix + name + ".")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def modules(self) -> Iterator["Module"]:
        yield self
        for _, child in self.children():
            yield from child.modules()

    # -- state -------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into the parameters (cast to each parameter's dtype).

        Raises ValueError naming every missing, unexpected or mis-shaped key."""
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [
            f"{k}: expected {own[k].data.shape}, got {tuple(np.shape(state[k]))}"
            for k in own
            if k in state and tuple(np.shape(state[k])) != own[k].data.shape
        ]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if wrong:
            problems.append("shape mismatch: " + "; ".join(wrong[:8]))
        if problems:
            raise ValueError("state dict does not match the model: " + " | ".join(problems))
        for name, p in own.items():
            if name in state:
                p.data[...] = np.asarray(state[name], dtype=p.data.dtype)
        self._refresh_precomputed()

    def to(self, dtype) -> "Module":
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = np.zeros_like(p.data)
        self._refresh_precomputed()
        return self

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad.fill(0)

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            m.training = mode
        if mode:
            self.drop_precomputed()
        return self

    # -- inference fast path -----------------------------------------------
    # Like diffusers' fuse_qkv_projections, an opt-in for inference: layers
    # compute what they derive from their weights on every call (a conv's
    # (k*k*C, O) matrix, Upsample2D's phase kernels) once, up front. The
    # copies are used only while gradients are off; load_state_dict() and
    # to() refresh them, train() drops them. Weights edited in place
    # afterwards are not seen until this is called again.
    def precompute_for_inference(self) -> "Module":
        for m in self.modules():
            m.precomputed = True
            m._build_precomputed()
        return self

    def drop_precomputed(self) -> "Module":
        for m in self.modules():
            m.precomputed = False
            m._drop_precomputed()
        return self

    def _refresh_precomputed(self) -> None:
        for m in self.modules():
            if m.precomputed:
                m._build_precomputed()

    def _build_precomputed(self) -> None:
        """Override: compute the weight-derived arrays inference reuses."""

    def _drop_precomputed(self) -> None:
        """Override: forget them."""

    def eval(self) -> "Module":
        return self.train(False)

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    # -- calling -------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError


class ModuleList(Module):
    """Children named "0", "1", ... like torch.nn.ModuleList. `None` entries
    keep their index (diffusers' mid block stores `None` for a disabled
    attention) and own no parameters."""

    def __init__(self, items=()):
        self._items = list(items)

    def children(self):
        for i, m in enumerate(self._items):
            if m is not None:
                yield str(i), m

    def named_parameters(self, prefix: str = ""):
        for name, m in self.children():
            yield from m.named_parameters(prefix + name + ".")

    def __getitem__(self, i):
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)

    def append(self, m) -> None:
        self._items.append(m)
