"""Noise parameterisation of discrete VP (DDPM-style) models: the one place that converts between conventions.

Inside the package everything is in the sigma (VE / Karras / k-diffusion) convention: a noisy sample is
`x = x0 + sigma * noise`, and the probability-flow ODE is `dx/dsigma = (x - D(x; sigma)) / sigma`, where `D` is the
denoiser (the model's estimate of `x0`). diffusers' VP schedulers keep the sample normalised instead,
`x_vp = alpha * x0 + sigma_vp * noise` with `alpha = 1 / sqrt(1 + sigma^2)` and `sigma_vp = sigma * alpha`.
This module holds the sigma <-> timestep map, the VP <-> sigma state conversion and x0 from the model output.
"""

import math
from typing import Literal

import numpy as np
import torch


PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _betas_for_cosine(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), as diffusers' `squaredcos_cap_v2`."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    steps = np.arange(num_train_timesteps)
    return np.array(
        [
            min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
            for i in steps
        ]
    )


def alphas_cumprod_from_betas(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    trained_betas: list[float] | np.ndarray | None = None,
    rescale_betas_zero_snr: bool = False,
) -> np.ndarray:
    """Cumulative product of `1 - beta` for a diffusers beta config, in float64.

    Follows diffusers' definitions of the `linear`, `scaled_linear` and `squaredcos_cap_v2` schedules and of zero-SNR
    rescaling (Lin et al. 2023, Algorithm 1), whose last value is replaced by 2^-24 so that sigma stays finite.
    """
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float64)
    elif beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = _betas_for_cosine(num_train_timesteps)
    else:
        raise ValueError(f"beta_schedule {beta_schedule!r} is not supported; choose one of {BETA_SCHEDULES}")
    if rescale_betas_zero_snr:
        sqrt_ac = np.sqrt(np.cumprod(1.0 - betas))
        first, last = sqrt_ac[0], sqrt_ac[-1]
        sqrt_ac = (sqrt_ac - last) * first / (first - last)
        alphas_cumprod = sqrt_ac**2
        alphas_cumprod[-1] = 2.0**-24
        return alphas_cumprod
    return np.cumprod(1.0 - betas)


class VPNoiseSchedule:
    """Sigma <-> timestep map of a discrete VP model with `sigma_t = sqrt((1 - alphabar_t) / alphabar_t)`.

    Timesteps may be fractional: `t -> sigma` interpolates log sigma linearly between integer timesteps and
    `sigma -> t` inverts it, the rule diffusers' `EulerDiscreteScheduler` uses for custom sigmas, so a schedule
    exported as sigmas gives the stock scheduler the same timesteps.

    Args:
        alphas_cumprod (`np.ndarray`): the model's cumulative alphas, one per training timestep.
    """

    def __init__(self, alphas_cumprod: np.ndarray):
        alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        self.train_sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
        self.log_sigmas = np.log(self.train_sigmas)
        if np.any(np.diff(self.log_sigmas) <= 0):
            raise ValueError("the training sigmas must increase strictly with the timestep")
        self.num_train_timesteps = len(alphas_cumprod)

    @property
    def sigma_min(self) -> float:
        return float(self.train_sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.train_sigmas[-1])

    def t_to_sigma(self, t: np.ndarray | list[float] | float) -> np.ndarray:
        """Fractional timesteps in [0, T - 1] -> sigmas (log-linear interpolation)."""
        t = np.asarray(t, dtype=np.float64)
        return np.exp(np.interp(t, np.arange(self.num_train_timesteps), self.log_sigmas))

    def sigma_to_t(self, sigma: np.ndarray | list[float] | float) -> np.ndarray:
        """Sigmas in [sigma_min, sigma_max] -> fractional timesteps; sigma = 0 maps to timestep 0."""
        sigma = np.asarray(sigma, dtype=np.float64)
        log_sigma = np.log(np.clip(sigma, self.sigma_min, self.sigma_max))
        return np.interp(log_sigma, self.log_sigmas, np.arange(self.num_train_timesteps, dtype=np.float64))


def is_vp_scheduler_config(config: dict) -> bool:
    """Whether a diffusers scheduler config describes a discrete VP (DDPM-style) noise schedule, not flow matching."""
    return "FlowMatch" not in str(config.get("_class_name", "")) and "shift" not in config and "beta_start" in config


def alpha(sigma: float) -> float:
    """VP signal scale `alpha = 1 / sqrt(1 + sigma^2)` for a VE sigma."""
    return 1.0 / math.sqrt(1.0 + sigma * sigma)


def vp_to_sigma_space(sample: torch.Tensor, sigma: float) -> torch.Tensor:
    """A VP-normalised sample (diffusers DDIM / DPM-Solver convention) -> the sigma-space state `x0 + sigma * noise`."""
    return sample / alpha(sigma)


def sigma_space_to_vp(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The sigma-space state -> the VP-normalised sample; at sigma = 0 both are the clean sample."""
    return x * alpha(sigma)


def denoised_from_model_output(
    model_output: torch.Tensor, x: torch.Tensor, sigma: float, prediction_type: PredictionType
) -> torch.Tensor:
    """The denoiser D(x; sigma), i.e. the model's x0 estimate, from a model output at the sigma-space state `x`.

    epsilon: `x0 = x - sigma * eps`; v_prediction (Salimans & Ho 2022): `x0 = alpha * x_vp - sigma_vp * v`, which in
    sigma space is `x / (1 + sigma^2) - sigma * alpha * v`; sample: the output is x0.
    """
    if prediction_type == "epsilon":
        return x - sigma * model_output
    if prediction_type == "v_prediction":
        a = alpha(sigma)
        return x * a * a - sigma * a * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"prediction_type {prediction_type!r} is not supported; choose one of {PREDICTION_TYPES}")
