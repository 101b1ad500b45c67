"""Files in and out, no pickle anywhere: weights (safetensors + JSON), the
MNIST data set (.npz or IDX), images (PNG, GIF)."""
from .weights import (MAX_MODEL_PARAMETERS, WeightsError, check_weights, load_safetensors, load_weights_into,
                      read_header, read_json, save_safetensors)

__all__ = ["MAX_MODEL_PARAMETERS", "WeightsError", "check_weights", "load_safetensors", "load_weights_into",
           "read_header", "read_json", "save_safetensors"]
