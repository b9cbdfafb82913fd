"""A VP pipeline stand-in around the exact Gaussian-mixture model (`diffusers_gits.gaussian_mixture`)."""

import torch

from diffusers_gits.gaussian_mixture import GaussianMixture


class GaussianMixturePipeline:
    """A stand-in diffusers pipeline whose model is the mixture's exact epsilon predictor on a VP noise schedule.

    It has what calibration uses of a pipeline: `scheduler`, `set_progress_bar_config` and a DDPMPipeline-like
    `__call__(batch_size, generator, num_inference_steps, output_type)`.
    """

    def __init__(self, mixture: GaussianMixture, scheduler):
        from diffusers_gits.noise import VPNoiseSchedule

        self.mixture = mixture
        self.scheduler = scheduler
        self.noise = VPNoiseSchedule(scheduler.alphas_cumprod.double().numpy())
        self._progress_bar_config = {}

    def set_progress_bar_config(self, **kwargs):
        self._progress_bar_config.update(kwargs)

    def start_noise(self, generators):
        return torch.cat([torch.randn(1, self.mixture.dim, generator=g, dtype=torch.float64) for g in generators])

    def __call__(self, batch_size=1, generator=None, num_inference_steps=50, output_type="np"):
        generators = generator if isinstance(generator, list) else [generator] * batch_size
        x = self.start_noise(generators)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            sigma = float(self.noise.t_to_sigma(float(t)))
            x_sigma = x * (1 + sigma**2) ** 0.5
            eps = (x_sigma - self.mixture.denoiser(x_sigma, sigma)) / sigma
            x = self.scheduler.step(eps, t, x).prev_sample
        return x
