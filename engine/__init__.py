"""digitgen's pure-NumPy diffusion engine."""
from .models.unet_2d import UNet2DConfig, UNet2DModel
from .nn.module import no_grad

__all__ = ["UNet2DConfig", "UNet2DModel", "no_grad"]
