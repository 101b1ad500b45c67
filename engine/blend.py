"""Between two generations: the noise of two seeds and the class embeddings
of two labels, mixed by a weight alpha (a morph's frame).

* Noise is spherically interpolated (slerp, as AUTOMATIC1111's variation
  seeds and lucidrains' `interpolate` do): a straight mix of two Gaussian
  draws has a smaller norm than either, and the model reads a faint x_T as
  a different noise level; slerp keeps it on the sphere where x_T lives.
  Every draw a stochastic sampler makes later is slerped the same way
  (`BlendedNoise`), so the whole run moves smoothly with alpha.
* The class embedding is interpolated linearly (`class_weights`: the UNet
  mixes its embedding rows, engine/models/unet_2d.py).

At alpha 0 and 1 both are exactly the ends (no arithmetic touches them), so
a morph's first and last frames are the two plain generations, bit for bit.
"""
from __future__ import annotations

import numpy as np


def slerp(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical interpolation from a (alpha 0) to b (alpha 1), float32."""
    if alpha == 0:
        return a
    if alpha == 1:
        return b
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cos = np.dot(a64, b64) / (np.linalg.norm(a64) * np.linalg.norm(b64))
    theta = np.arccos(np.clip(cos, -1.0, 1.0))
    if theta < 1e-6:  # (nearly) the same direction: the straight mix is the arc
        out = (1 - alpha) * a64 + alpha * b64
    else:
        out = (np.sin((1 - alpha) * theta) * a64 + np.sin(alpha * theta) * b64) / np.sin(theta)
    return out.reshape(a.shape).astype(np.float32)


class BlendedNoise(np.random.Generator):
    """A generator whose standard normal draws are the slerp of two
    generators' draws (each consumes its own stream as it would alone)."""

    def __init__(self, a: np.random.Generator, b: np.random.Generator, alpha: float):
        super().__init__(np.random.PCG64(0))  # unused: every draw a sampler makes comes from a and b
        self.a, self.b, self.alpha = a, b, float(alpha)

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        if out is not None:
            raise TypeError("BlendedNoise.standard_normal takes no out=")
        return slerp(self.a.standard_normal(size, dtype=dtype), self.b.standard_normal(size, dtype=dtype),
                     self.alpha)


def class_weights(label_a: int, label_b: int, alpha: float, num_classes: int) -> np.ndarray:
    """(num_classes,) float32 weights of the class embeddings: label_a's at alpha 0, label_b's at 1."""
    w = np.zeros(num_classes, np.float32)
    if label_a == label_b:  # (1 - alpha) + alpha need not round to 1
        w[label_a] = 1
    else:
        w[label_a], w[label_b] = 1 - alpha, alpha
    return w
