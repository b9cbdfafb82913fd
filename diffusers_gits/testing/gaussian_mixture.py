"""An exact diffusion model: a Gaussian mixture with isotropic components, whose optimal denoiser is closed form.

With a component on every training image (a kernel density estimate) it is a model of real data whose sampling ODE
can be solved to any accuracy, for tests and benchmarks. `MixtureFlowPipeline` samples it as a flow-matching model
through a diffusers scheduler, with Flux's scheduler protocol, and `GaussianMixturePipeline` as a VP model, the way
DDPMPipeline does, so calibration can run on it like on any pipeline of either family.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..solvers import sample


class GaussianMixture:
    """Mixture of N(mean_k, std_k^2 I); `denoiser(x, sigma)` is E[x0 | x0 + sigma * noise = x] on the sigma path.

    Args:
        means (`torch.Tensor`): (K, D) component means.
        stds (`torch.Tensor`): (K,) component standard deviations.
        log_weights (`torch.Tensor`): (K,) log mixture weights (normalised here).
    """

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, log_weights: torch.Tensor):
        self.means = means.to(torch.float64)
        self.stds = stds.to(torch.float64)
        self.log_weights = torch.log_softmax(log_weights.to(torch.float64), 0)
        self.dim = self.means.shape[1]

    @classmethod
    def random(cls, dim: int = 8, num_components: int = 3, seed: int = 0) -> "GaussianMixture":
        """A few well-separated random components (means ~ N(0, 1.5^2), stds in [0.15, 0.5])."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(num_components, dim, generator=g, dtype=torch.float64) * 1.5
        stds = 0.15 + 0.35 * torch.rand(num_components, generator=g, dtype=torch.float64)
        return cls(means, stds, torch.randn(num_components, generator=g, dtype=torch.float64))

    @classmethod
    def kde(cls, data: torch.Tensor, bandwidth: float) -> "GaussianMixture":
        """The Gaussian kernel density estimate of `data` (N, ...): one equal-weight component per sample."""
        means = data.reshape(len(data), -1).to(torch.float64)
        return cls(means, torch.full((len(means),), float(bandwidth)), torch.zeros(len(means)))

    def _log_joint(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """log(weight_k N(x; mean_k, (std_k^2 + sigma^2) I)) for each row of `x` (B, K), and the variances (K,)."""
        var = self.stds**2 + sigma**2
        sq = torch.cdist(x.to(torch.float64), self.means) ** 2
        return self.log_weights - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var), var

    def log_density(self, x: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
        """log p(x) (B,) of the mixture smoothed by noise of level `sigma` (the data density itself at 0)."""
        return torch.logsumexp(self._log_joint(x, sigma)[0], dim=1)

    def denoiser(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The optimal denoiser on the sigma path (`x = x0 + sigma * noise`), batched over rows of `x` (B, D)."""
        x64 = x.to(torch.float64)
        logp, var = self._log_joint(x64, sigma)
        resp = torch.softmax(logp, dim=1)  # (B, K)
        shrink = self.stds**2 / var  # (K,)
        # sum_k r_k (m_k + s_k (x - m_k)) = (r @ ((1 - s) m)) + (r @ s) x
        return ((resp * (1 - shrink)) @ self.means + (resp @ shrink)[:, None] * x64).to(x.dtype)

    def flow_denoiser(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The same denoiser on the flow path `x = (1 - sigma) x0 + sigma * noise`, sigma in [0, 1]."""
        if sigma >= 1:  # pure noise: the data mean
            mean = self.log_weights.exp() @ self.means
            return mean.expand_as(x).to(x.dtype)
        return self.denoiser(x / (1 - sigma), sigma / (1 - sigma))

    def exact_solution(self, x: torch.Tensor, sigmas: list[float], steps_per_interval: int = 400) -> torch.Tensor:
        """A converged reference on the sigma path: iPNDM on a fine log-sigma grid between consecutive `sigmas`."""
        fine = []
        for a, b in zip(sigmas[:-1], sigmas[1:]):
            if b == 0:
                fine.append(torch.tensor([a]))
                continue
            fine.append(torch.exp(torch.linspace(math.log(a), math.log(b), steps_per_interval + 1))[:-1])
        grid = torch.cat(fine).tolist() + [sigmas[-1]]
        return sample(self.denoiser, x, grid, solver="ipndm")


class _MixturePipeline:
    """What both mixture pipelines share: the model, the scheduler, components, the progress-bar hook and noises."""

    def __init__(self, mixture: GaussianMixture, scheduler):
        self.mixture = mixture
        self.scheduler = scheduler
        self._progress_bar_config = {}

    @property
    def components(self) -> dict:
        """The model and the scheduler, as a diffusers pipeline lists its components (the calibration keys them)."""
        return {"mixture": self.mixture, "scheduler": self.scheduler}

    def set_progress_bar_config(self, **kwargs):
        self._progress_bar_config.update(kwargs)

    def start_noise(self, generators: list[torch.Generator]) -> torch.Tensor:
        return torch.cat([torch.randn(1, self.mixture.dim, generator=g, dtype=torch.float64) for g in generators])


class GaussianMixturePipeline(_MixturePipeline):
    """A Gaussian mixture sampled as a VP (DDPM-style) model through `scheduler`, the way DDPMPipeline drives one.

    The model is the mixture's exact epsilon predictor on the scheduler's noise schedule; each call draws one noise
    per generator and feeds the predictions to `scheduler.step` at every timestep. It has what calibration uses of a
    pipeline: `scheduler`, `set_progress_bar_config` and `__call__(batch_size, generator, num_inference_steps,
    output_type)`.

    Args:
        mixture (`GaussianMixture`): the data model.
        scheduler: a VP scheduler (DDPMScheduler, GITSScheduler, ...).
    """

    def __init__(self, mixture: GaussianMixture, scheduler):
        from ..noise import VPNoiseSchedule

        super().__init__(mixture, scheduler)
        self.noise = VPNoiseSchedule(scheduler.alphas_cumprod.double().numpy())

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


@dataclass
class MixtureOutput:
    images: torch.Tensor


class MixtureFlowPipeline(_MixturePipeline):
    """A Gaussian mixture sampled as a flow-matching model through `scheduler`, the way FluxPipeline drives one.

    Each call draws one noise per generator, calls `set_timesteps(sigmas=linspace(1, 1/N, N), mu=mu)` (Flux always
    passes its default sigmas and, under dynamic shifting, `mu`), then feeds the exact velocity `(x - D(x)) / sigma`
    to `scheduler.step` at every timestep. It has what calibration uses of a pipeline.

    Args:
        mixture (`GaussianMixture`): the data model.
        scheduler: a flow-matching scheduler (FlowMatchEulerDiscreteScheduler, GITSFlowMatchScheduler).
        mu (`float`, *optional*): the dynamic-shift parameter to pass (Flux at 1024x1024: 1.15).
    """

    def __init__(self, mixture: GaussianMixture, scheduler, mu: float | None = None):
        super().__init__(mixture, scheduler)
        self.mu = mu

    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        output_type: str = "latent",
    ) -> MixtureOutput:
        generators = generator if isinstance(generator, list) else [generator or torch.Generator()] * batch_size
        x = self.start_noise(generators)
        if sigmas is None:
            sigmas = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)
        self.scheduler.set_timesteps(sigmas=sigmas, mu=self.mu)
        self.scheduler.set_begin_index(0)
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        for t in self.scheduler.timesteps:
            sigma = float(t) / num_train_timesteps
            velocity = (x - self.mixture.flow_denoiser(x, sigma)) / sigma
            x = self.scheduler.step(velocity.float(), t, x.float(), return_dict=False)[0].to(torch.float64)
        return MixtureOutput(images=x)
