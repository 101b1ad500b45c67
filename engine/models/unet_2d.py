"""UNet2DModel: diffusers' config fields, module tree and state-dict keys,
in NumPy with a full backward pass.

The public forward takes and returns NCHW arrays like diffusers; inside,
activations are channels-last (see engine/nn/ops.py).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.weights import WeightsError, load_weights_into, read_json, save_safetensors

from ..nn.embeddings import TimestepEmbedding, Timesteps
from ..nn.layers import Conv2d, Embedding, GroupNorm
from ..nn.module import Module, ModuleList, grad_enabled
from .unet_2d_blocks import DOWN_BLOCKS, UP_BLOCKS, UNetMidBlock2D

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DIFFUSERS_VERSION = "0.42.1"  # the diffusers release our parity fixtures were made with


@dataclass
class UNet2DConfig:
    """diffusers.UNet2DModel's config fields, with its defaults. Values this
    engine does not implement are rejected by `validate`."""

    sample_size: int | None = None
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    freq_shift: int = 0
    flip_sin_to_cos: bool = True
    down_block_types: tuple = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2D"
    up_block_types: tuple = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    block_out_channels: tuple = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1
    downsample_padding: int = 1
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    dropout: float = 0.0
    act_fn: str = "silu"
    attention_head_dim: int | None = 8
    norm_num_groups: int = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    class_embed_type: str | None = None
    num_class_embeds: int | None = None
    num_train_timesteps: int | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict) -> "UNet2DConfig":
        """Accepts a diffusers config.json dict; keys starting with '_'
        (`_class_name`, `_diffusers_version`) are kept aside, unknown keys are
        an error."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = sorted(k for k in d if k not in names and not k.startswith("_"))
        if unknown:
            raise ValueError(f"unknown UNet2DModel config keys: {unknown}")
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        cfg = cls(**kwargs, extra={k: v for k, v in d.items() if k.startswith("_")})
        cfg.validate()
        return cfg

    @property
    def null_class_label(self) -> int | None:
        """The class that means "no label" for classifier-free guidance: by
        this project's convention the last class embedding (10 of 0-10)."""
        return self.num_class_embeds - 1 if self.num_class_embeds else None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return {"_class_name": "UNet2DModel", **d}

    def validate(self) -> None:
        def unsupported(name, allowed):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"UNet2DModel config: {name}={value!r} is not supported (supported: {allowed})")

        unsupported("time_embedding_type", ["positional"])
        unsupported("downsample_type", ["conv"])
        unsupported("upsample_type", ["conv"])
        unsupported("act_fn", ["silu", "swish"])
        unsupported("resnet_time_scale_shift", ["default"])
        unsupported("class_embed_type", [None])
        unsupported("mid_block_type", ["UNetMidBlock2D", None])
        unsupported("center_input_sample", [False, True])
        unsupported("downsample_padding", [1])
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError("UNet2DModel config: block_out_channels, down_block_types and up_block_types "
                             "must have the same length")
        for t in self.down_block_types:
            if t not in DOWN_BLOCKS:
                raise ValueError(f"UNet2DModel config: down block {t!r} not supported ({sorted(DOWN_BLOCKS)})")
        for t in self.up_block_types:
            if t not in UP_BLOCKS:
                raise ValueError(f"UNet2DModel config: up block {t!r} not supported ({sorted(UP_BLOCKS)})")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"UNet2DModel config: {c} channels do not split into "
                                 f"norm_num_groups={self.norm_num_groups} groups")


class UNet2DModel(Module):
    def __init__(self, config: UNet2DConfig | None = None, rng: np.random.Generator | None = None, **kwargs):
        if config is None:
            config = UNet2DConfig.from_dict(kwargs)
        elif kwargs:
            raise TypeError("pass either a config or keyword arguments, not both")
        config.validate()
        self.config = c = config
        rng = rng if rng is not None else np.random.default_rng(0)
        ch = c.block_out_channels
        temb_dim = c.time_embedding_dim or ch[0] * 4
        groups, eps, drop = c.norm_num_groups, c.norm_eps, c.dropout

        self.conv_in = Conv2d(c.in_channels, ch[0], 3, padding=1, rng=rng)
        self.time_proj = Timesteps(ch[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(ch[0], temb_dim, rng=rng)
        self.class_embedding = Embedding(c.num_class_embeds, temb_dim, rng=rng) if c.num_class_embeds else None

        def head_dim(block_type, channels):
            if not block_type.startswith("Attn"):
                return None
            return c.attention_head_dim if c.attention_head_dim is not None else channels

        self.down_blocks = ModuleList()
        out = ch[0]
        for i, block_type in enumerate(c.down_block_types):
            inp, out = out, ch[i]
            self.down_blocks.append(DOWN_BLOCKS[block_type](
                inp, out, temb_dim, c.layers_per_block, add_downsample=i < len(ch) - 1, groups=groups, eps=eps,
                dropout=drop, attention_head_dim=head_dim(block_type, out), rng=rng))

        self.mid_block = None
        if c.mid_block_type is not None:
            self.mid_block = UNetMidBlock2D(
                ch[-1], temb_dim, groups, eps, drop, c.mid_block_scale_factor,
                c.attention_head_dim if c.attention_head_dim is not None else ch[-1],
                add_attention=c.add_attention, attn_groups=c.attn_norm_num_groups, rng=rng)

        self.up_blocks = ModuleList()
        rev = list(reversed(ch))
        out = rev[0]
        for i, block_type in enumerate(c.up_block_types):
            prev, out = out, rev[i]
            inp = rev[min(i + 1, len(ch) - 1)]
            self.up_blocks.append(UP_BLOCKS[block_type](
                inp, prev, out, temb_dim, c.layers_per_block + 1, add_upsample=i < len(ch) - 1, groups=groups,
                eps=eps, dropout=drop, attention_head_dim=head_dim(block_type, out), rng=rng))

        self.conv_norm_out = GroupNorm(groups, ch[0], eps)  # + SiLU (diffusers' conv_act), fused
        self.conv_out = Conv2d(ch[0], c.out_channels, 3, padding=1, rng=rng)
        self._skip_slices: list[slice] = []  # forward's skip list, per down block
        self._up_slices: list[slice] = []    # ... and the part each up block consumed

    # -- weights in diffusers' folder layout ---------------------------------
    # A folder written by diffusers' UNet2DModel.save_pretrained loads here,
    # and diffusers' from_pretrained loads a folder written here.
    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "UNet2DModel":
        """Build from config.json + diffusion_pytorch_model.safetensors. Raises
        WeightsError with a message that says what is wrong."""
        folder = Path(folder)
        if not folder.is_dir():
            raise WeightsError(f"weights folder not found: {folder}")
        raw = read_json(folder / CONFIG_NAME, "model config")
        try:
            config = UNet2DConfig.from_dict(raw)
        except (TypeError, ValueError) as e:
            raise WeightsError(f"model config {folder / CONFIG_NAME} is invalid: {e}") from None
        return load_weights_into(cls(config), folder / WEIGHTS_NAME).eval()

    def save_pretrained(self, folder: str | Path, state: dict[str, np.ndarray] | None = None) -> Path:
        """Write config.json and the safetensors weights (float32). `state`
        overrides the model's own parameters (e.g. the EMA weights)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {**self.config.to_dict(), "_diffusers_version": DIFFUSERS_VERSION}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = state if state is not None else self.state_dict()
        save_safetensors({k: np.asarray(v, np.float32) for k, v in state.items()}, folder / WEIGHTS_NAME,
                         metadata={"format": "pt"})
        return folder

    # ------------------------------------------------------------------
    def _embed(self, timestep, class_labels, batch: int) -> np.ndarray:
        t = np.broadcast_to(np.asarray(timestep).reshape(-1), (batch,))
        emb = self.time_embedding(self.time_proj(t).astype(self.conv_in.weight.data.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels should be provided when doing class conditioning")
            labels = np.broadcast_to(np.asarray(class_labels, dtype=np.int64).reshape(-1), (batch,))
            emb = emb + self.class_embedding(labels)
        elif class_labels is not None:
            raise ValueError("class_embedding needs to be initialized in order to use class conditioning")
        return emb

    def forward(self, sample: np.ndarray, timestep, class_labels=None) -> np.ndarray:
        """sample: (B, C, H, W); timestep: scalar or (B,); class_labels: (B,) ints.
        Returns the model output, (B, out_channels, H, W). For inference on
        large batches, models.runner.InferenceRunner runs it in shards."""
        if sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            raise ValueError(f"sample must be (B, {self.config.in_channels}, H, W), got {sample.shape}")
        B = sample.shape[0]
        x = np.ascontiguousarray(sample.transpose(0, 2, 3, 1), dtype=self.conv_in.weight.data.dtype)
        if self.config.center_input_sample:
            x = 2 * x - 1.0
        emb = self._embed(timestep, class_labels, B)

        h = self.conv_in(x)
        skips = [h]
        skip_slices = []
        for block in self.down_blocks:
            h, states = block(h, emb)
            skip_slices.append(slice(len(skips), len(skips) + len(states)))
            skips.extend(states)
        if self.mid_block is not None:
            h = self.mid_block(h, emb)
        up_slices = []
        for block in self.up_blocks:
            n = len(block.resnets)
            up_slices.append(slice(len(skips) - n, len(skips)))
            h = block(h, skips[-n:], emb)
            del skips[-n:]
        if grad_enabled():  # like every layer's cache: only for backward (inference may run on several threads)
            self._skip_slices, self._up_slices = skip_slices, up_slices
        h = self.conv_out(self.conv_norm_out(h, silu=True))
        return h.transpose(0, 3, 1, 2)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """grad: d loss / d output, (B, C, H, W). Accumulates every parameter's
        .grad and returns d loss / d sample (B, C, H, W)."""
        g = np.ascontiguousarray(grad.transpose(0, 2, 3, 1), dtype=self.conv_out.weight.data.dtype)
        g = self.conv_norm_out.backward(self.conv_out.backward(g))

        # skip gradients, indexed like the forward's `skips` list
        n_skips = 1 + sum(s.stop - s.start for s in self._skip_slices)
        skip_grads: list = [None] * n_skips
        demb = None

        def add_emb(d):
            nonlocal demb
            if d is not None:
                demb = d if demb is None else demb + d

        for block, sl in reversed(list(zip(self.up_blocks, self._up_slices))):
            g, d_skips, d = block.backward(g)
            add_emb(d)
            for idx, ds in zip(range(sl.start, sl.stop), d_skips):
                skip_grads[idx] = ds if skip_grads[idx] is None else skip_grads[idx] + ds
        if self.mid_block is not None:
            g, d = self.mid_block.backward(g)
            add_emb(d)
        for block, sl in reversed(list(zip(self.down_blocks, self._skip_slices))):
            g, d = block.backward(g, skip_grads[sl])
            add_emb(d)
        if skip_grads[0] is not None:
            g = g + skip_grads[0]
        dx = self.conv_in.backward(g)
        if self.config.center_input_sample:
            dx = dx * 2

        if demb is not None:
            self.time_embedding.backward(demb)
            if self.class_embedding is not None:
                self.class_embedding.backward(demb)
        return dx.transpose(0, 3, 1, 2)
