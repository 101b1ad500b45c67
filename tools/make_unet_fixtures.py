"""Record diffusers' UNet2DModel behaviour as test fixtures (dev only).

Run in a separate venv that has PyTorch and diffusers (never a runtime
dependency of digitgen):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 diffusers safetensors numpy
    /tmp/refvenv/bin/python tools/make_unet_fixtures.py

Writes, under tests/fixtures/:
  unet_<name>.safetensors   weights, inputs, output and the gradients of
                            L = sum(w * output) w.r.t. the input and every
                            parameter, for each config below (float32)
  unet_<name>.json          the diffusers config
  roundtrip/diffusers_saved/  a folder written by diffusers' save_pretrained
  roundtrip/ours_saved/       a folder written by digitgen's save_pretrained
  roundtrip/expected.safetensors  diffusers' outputs for both folders
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel as DiffusersUNet
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "tests" / "fixtures"

CONFIGS = {
    # attention down/up blocks, mid attention, class embeddings, 2 heads
    "attn_class": dict(
        sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=11, norm_num_groups=8, attention_head_dim=16,
    ),
    # three levels, no attention at all, two channels, no class embedding
    "plain": dict(
        sample_size=16, in_channels=2, out_channels=2, block_out_channels=(8, 16, 16), layers_per_block=2,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, add_attention=False,
        norm_num_groups=4, flip_sin_to_cos=False, freq_shift=1,
    ),
    # the shipped architecture's shape, at a smaller width
    "shipped_like": dict(
        sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 16, 16), layers_per_block=2,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, num_class_embeds=11,
        norm_num_groups=4, attention_head_dim=8,
    ),
}


def randomise_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
    """GroupNorm weights start at 1/0; perturb them so the test sees them act."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


def record(name: str, cfg: dict) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = DiffusersUNet(**cfg).float()
    randomise_norms(model, gen)
    B, S, C = 3, cfg["sample_size"], cfg["in_channels"]
    x = torch.randn(B, C, S, S, generator=gen, requires_grad=True)
    t = torch.tensor([0, 417, 999])
    labels = torch.tensor([3, 10, 7]) if cfg.get("num_class_embeds") else None
    out = model(x, t, labels).sample
    w = torch.randn(out.shape, generator=gen)
    (out * w).sum().backward()

    arrays = {"input": x.detach().numpy(), "timesteps": t.numpy(), "output": out.detach().numpy(),
              "loss_weights": w.numpy(), "grad/input": x.grad.numpy()}
    if labels is not None:
        arrays["class_labels"] = labels.numpy()
    for k, p in model.named_parameters():
        arrays["param/" + k] = p.detach().numpy()
        arrays["grad/" + k] = p.grad.numpy()
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(FIXTURES / f"unet_{name}.safetensors"))
    (FIXTURES / f"unet_{name}.json").write_text(json.dumps(dict(model.config), indent=2, default=list) + "\n")
    print(f"unet_{name}: {sum(p.numel() for p in model.parameters())} parameters")


def roundtrip() -> None:
    from engine import UNet2DModel

    rt = FIXTURES / "roundtrip"
    shutil.rmtree(rt, ignore_errors=True)
    rt.mkdir(parents=True)
    cfg = CONFIGS["attn_class"]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 16, 16, generator=gen)
    t = torch.tensor([5, 800])
    labels = torch.tensor([1, 10])

    torch.manual_seed(3)
    theirs = DiffusersUNet(**cfg)
    randomise_norms(theirs, gen)
    theirs.save_pretrained(rt / "diffusers_saved")

    # digitgen writes a folder (seeded, so the test can re-create it byte for byte) ...
    ours = UNet2DModel(**cfg, rng=np.random.default_rng(4))
    ours.save_pretrained(rt / "ours_saved")
    # ... and diffusers must load it
    loaded = DiffusersUNet.from_pretrained(rt / "ours_saved")

    with torch.no_grad():
        expected = {
            "input": x.numpy(), "timesteps": t.numpy(), "class_labels": labels.numpy(),
            "diffusers_saved/output": theirs(x, t, labels).sample.numpy(),
            "ours_saved/output": loaded(x, t, labels).sample.numpy(),
        }
    save_file(expected, str(rt / "expected.safetensors"))
    print("roundtrip fixtures written")


if __name__ == "__main__":
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, cfg in CONFIGS.items():
        record(name, cfg)
    roundtrip()
