"""Scoring schedules on a model: reference solutions, RMSE to them, and a distribution distance to real data.

Shared by the `demo` command and `benchmarks/quality.py`. The model is wrapped once as a sigma-space denoiser and
sampled with the same solver functions the scheduler uses, so a schedule scores here exactly as it samples in a
pipeline with `GITSScheduler`.
"""

import numpy as np
import torch

from .calibration.settings import MAX_WARMUP
from .noise import VPNoiseSchedule, alpha, denoised_from_model_output, vp_to_sigma_space
from .schedules import timestep_spacing_sigmas
from .solvers import sample


#: The benchmarks' test noises: generator seeds from here on, above every warm-up noise of calibration seed 0 (and
#: below those of seed 1, which start at 2^32).
TEST_SEED = MAX_WARMUP


class UNetDenoiser:
    """D(x; sigma) of a diffusers UNet on a discrete VP schedule, for sigma-space solvers; counts model calls.

    Args:
        unet: a `UNet2DModel`-like module called as `unet(sample, timestep).sample`.
        noise (`VPNoiseSchedule`): the model's sigma <-> timestep map.
        prediction_type (`str`): the model's output type.
        batch_size (`int`, defaults to 256): model batch size.
    """

    def __init__(self, unet, noise: VPNoiseSchedule, prediction_type: str, batch_size: int = 256):
        self.unet = unet
        self.noise = noise
        self.prediction_type = prediction_type
        self.batch_size = batch_size
        self.model_calls = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        timestep = torch.tensor(float(self.noise.sigma_to_t(sigma)), dtype=torch.float32)
        outputs = []
        for chunk in x.split(self.batch_size):
            outputs.append(self.unet(chunk * alpha(sigma), timestep).sample)
        self.model_calls += len(x)
        return denoised_from_model_output(torch.cat(outputs), x, sigma, self.prediction_type)


def start_noise(num: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Per-sample seeded VP noise: sample i is `randn` from `torch.Generator().manual_seed(seed + i)`."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(num)])


def solve(denoiser, noise_vp: torch.Tensor, sigmas, solver: str) -> torch.Tensor:
    """Final samples from VP noise along `sigmas`: the pipeline's start `x = noise / alpha(sigma_0)`, then the solver."""
    sigmas = [float(s) for s in sigmas]
    return sample(denoiser, vp_to_sigma_space(noise_vp, sigmas[0]), sigmas, solver)


def reference_sigmas(noise: VPNoiseSchedule, num_steps: int = 500) -> np.ndarray:
    """A fine schedule for reference solutions: uniform in timestep (denser near sigma_min than Karras), then 0."""
    return timestep_spacing_sigmas(noise, num_steps, "linspace")


def per_sample_rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root mean square difference per sample (first dimension)."""
    return (a.float() - b.float()).flatten(1).pow(2).mean(1).sqrt()


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, num_projections: int = 512, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two sample sets (flattened), over random unit directions.

    Each 1-D distance compares quantiles at the same 256 levels, so the two sets may differ in size.
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    directions = torch.randn(
        a.shape[1], num_projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    directions /= directions.norm(dim=0, keepdim=True)
    levels = torch.linspace(0, 1, 256, dtype=torch.float64)
    qa = torch.quantile(a @ directions, levels, dim=0)
    qb = torch.quantile(b @ directions, levels, dim=0)
    return float((qa - qb).pow(2).mean().sqrt())
