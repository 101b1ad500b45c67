"""Strategic stochastic sampling (Zheng et al. 2024, "Trajectory Consistency
Distillation"), mirroring diffusers' TCDScheduler.

Same timesteps as LCM (the distillation grid, or a hand-picked list of its
points); a different jump between them. LCM re-noises its estimate of x_0
with fresh noise only, so each step forgets where the last one was. TCD
first steps deterministically (DDIM) from t to s = floor((1 - eta) * t_next),
keeping the model's own noise estimate, then adds fresh noise from s up to
t_next:

    x_s      = sqrt(abar_s) * x0_hat + sqrt(1 - abar_s) * eps_hat
    x_t_next = sqrt(abar_t_next / abar_s) * x_s + sqrt(1 - abar_t_next / abar_s) * z

eta = 1 is LCM's full re-noising (without LCM's boundary scalings), eta = 0
plain DDIM. The last step lands on timestep 0's x_s: x0_hat plus
sqrt(1 - abar_0) (~0.01) of eps_hat, as in diffusers.

Like diffusers, the step neither clips nor thresholds x0_hat (the config keeps
`clip_sample` only so that an LCM config loads unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import SchedulerOutput, check_eta, draw_noise, f32, x0_and_eps
from .lcm import LCMConfig, LCMScheduler


@dataclass(frozen=True)
class TCDConfig(LCMConfig):
    """diffusers' TCDScheduler config: the same keys and defaults as LCMScheduler's."""
    _class_name = "TCDScheduler"


class TCDScheduler(LCMScheduler, config=TCDConfig):
    """LCM's timesteps (set_timesteps is inherited); TCD's step."""
    DEFAULT_ETA = 0.3  # diffusers' default for step(eta=...)

    def step(self, model_output, timestep, sample, eta: float = DEFAULT_ETA, generator: np.random.Generator | None = None,
             variance_noise: np.ndarray | None = None) -> SchedulerOutput:
        """One jump: x0_hat and eps_hat from the model output, the DDIM step
        to s, then fresh noise from s up to the next timestep (none after
        the last step, or with eta = 0). Returns (prev_sample, x0_hat);
        diffusers returns x_s as its second output instead."""
        eta = check_eta(eta)
        model_output, sample, t, i = self._step_inputs(model_output, timestep, sample)
        last = i == self.num_inference_steps - 1
        next_t = 0 if last else int(self.timesteps[i + 1])   # diffusers: timestep 0 after the last step
        s = int(np.floor(f32(1 - eta) * f32(next_t)))   # in float32, as torch computes it (float64 can floor lower)

        one = f32(1.0)
        alpha_prod_next = self.alphas_cumprod[next_t]
        alpha_prod_s = self.alphas_cumprod[s]
        beta_prod_s = one - alpha_prod_s

        x0, eps = x0_and_eps(self.settings.prediction_type, model_output, sample, self.alphas_cumprod[t])
        x_s = np.sqrt(alpha_prod_s) * x0 + np.sqrt(beta_prod_s) * eps
        if eta > 0 and not last:
            keep = alpha_prod_next / alpha_prod_s   # float32, like diffusers' tensor division
            noise = draw_noise(model_output.shape, generator, variance_noise)
            prev_sample = np.sqrt(keep) * x_s + np.sqrt(one - keep) * noise
        else:
            prev_sample = x_s
        self._step_index = i + 1
        return SchedulerOutput(prev_sample.astype(np.float32, copy=False), x0.astype(np.float32, copy=False))
