"""Files in and out, no pickle anywhere: weights (safetensors + JSON), the
MNIST data set (.npz or IDX), images (PNG, GIF)."""
from .weights import WeightsError, load_safetensors, load_weights_into, read_json, save_safetensors

__all__ = ["WeightsError", "load_safetensors", "load_weights_into", "read_json", "save_safetensors"]
