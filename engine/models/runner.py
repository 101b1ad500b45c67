"""Inference around a model: large batches in per-thread shards.

`InferenceRunner(unet)(sample, timestep, labels)` is `unet(...)` under
no_grad, except that from runtime.SHARD_MIN_BATCH samples up the batch is
cut into one contiguous shard per engine thread, each carried through the
whole network by its thread (engine/nn/runtime.py says why). Every sample's
output bits are the same as when it runs alone.
"""
from __future__ import annotations

import numpy as np

from ..nn import runtime
from ..nn.module import no_grad


class InferenceRunner:
    def __init__(self, model):
        self.model = model

    def __call__(self, sample: np.ndarray, timestep, class_labels=None) -> np.ndarray:
        """sample (B, C, H, W); timestep and class_labels scalars or (B,)
        (class_labels may also be (B, K) class weights, see UNet2DModel)."""
        B = sample.shape[0]
        with no_grad():
            if not runtime.use_shards(B):
                return self.model(sample, timestep, class_labels)
            # per-sample arrays, so that every shard gets its own rows
            t = np.broadcast_to(np.asarray(timestep).reshape(-1), (B,))
            y = None if class_labels is None else np.asarray(class_labels)
            if y is not None and not (y.ndim == 2 and y.shape[0] == B):  # ints, one a row; (B, K) weights as they are
                y = np.broadcast_to(y.reshape(-1), (B,))

            def shard(s: slice) -> np.ndarray:
                with no_grad():  # no_grad is per thread
                    return self.model(sample[s], t[s], None if y is None else y[s])
            return np.concatenate(runtime.run_sharded(shard, B))
