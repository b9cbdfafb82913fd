"""An exact data model for tests: an isotropic Gaussian mixture, whose optimal denoiser is closed form."""

import torch

from diffusers_gits.solvers import sample


class GaussianMixture:
    """Mixture of N(mu_k, s_k^2 I) in `dim` dimensions; `denoiser(x, sigma)` is E[x0 | x0 + sigma * noise = x]."""

    def __init__(self, dim: int = 8, num_components: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.means = torch.randn(num_components, dim, generator=g, dtype=torch.float64) * 1.5
        self.stds = 0.15 + 0.35 * torch.rand(num_components, generator=g, dtype=torch.float64)
        self.log_weights = torch.log_softmax(torch.randn(num_components, generator=g, dtype=torch.float64), 0)
        self.dim = dim

    def denoiser(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        x64 = x.to(torch.float64)
        var = self.stds**2 + sigma**2  # (K,)
        sq = ((x64[:, None, :] - self.means[None]) ** 2).sum(-1)  # (B, K)
        logp = self.log_weights - 0.5 * sq / var - 0.5 * self.dim * torch.log(var)
        resp = torch.softmax(logp, dim=1)  # (B, K)
        shrink = (self.stds**2 / var)[None, :, None]
        per_component = self.means[None] + shrink * (x64[:, None, :] - self.means[None])
        return (resp[..., None] * per_component).sum(1).to(x.dtype)

    def flow_denoiser(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The same optimal denoiser on the flow-matching path `x = (1 - sigma) x0 + sigma * noise`, sigma in [0, 1]."""
        if sigma >= 1:  # pure noise: the data mean
            mean = (self.log_weights.exp()[:, None] * self.means).sum(0)
            return mean.expand_as(x).to(x.dtype)
        return self.denoiser(x / (1 - sigma), sigma / (1 - sigma))

    def exact_solution(self, x: torch.Tensor, sigmas: list[float], steps_per_interval: int = 400) -> torch.Tensor:
        """A converged reference: iPNDM on a very fine log-sigma grid between consecutive `sigmas`."""
        fine = []
        for a, b in zip(sigmas[:-1], sigmas[1:]):
            if b == 0:
                fine.append(torch.tensor([a]))
                continue
            fine.append(
                torch.exp(
                    torch.linspace(torch.log(torch.tensor(a)), torch.log(torch.tensor(b)), steps_per_interval + 1)
                )[:-1]
            )
        grid = torch.cat(fine).tolist() + [sigmas[-1]]
        return sample(self.denoiser, x, grid, solver="ipndm")


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
