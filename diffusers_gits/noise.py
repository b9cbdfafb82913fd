"""Noise parameterisation of VP (DDPM-style) and flow-matching models: the one place that converts between conventions.

Solvers work on a state `x = signal(t) * x0 + t * noise` along one of two paths (`OdePath`), with the denoiser `D`
(the model's estimate of `x0`) and the probability-flow ODE `dx/dt = (x - D(x; t)) / t` on both:

- VP models use the sigma (VE / Karras / k-diffusion) path, `x = x0 + sigma * noise`. diffusers' VP schedulers keep the
  sample normalised instead, `x_vp = alpha * x0 + sigma_vp * noise` with `alpha = 1 / sqrt(1 + sigma^2)` and
  `sigma_vp = sigma * alpha`; timesteps map to sigmas through the training `alphas_cumprod`.
- Flow-matching models (SD3, Flux) use their own path, `x = (1 - sigma) * x0 + sigma * noise` with sigma in [0, 1],
  the sample as diffusers keeps it; the model predicts the velocity `noise - x0`, the timestep is `sigma * T`, and
  the schedule is "shifted" towards high noise by a constant or by the resolution-dependent `mu`.

Both paths are the same ODE up to a change of variables (`sigma_ve = sigma / (1 - sigma)`, `x_ve = x / (1 - sigma)`),
but the flow path keeps pure noise (sigma = 1) finite. This module holds the sigma <-> timestep maps, the shifts, the
state conversions and x0 from the model output.
"""

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch


@dataclass(frozen=True)
class OdePath:
    """The coordinates a solver steps in: `x = signal(t) * x0 + t * noise`, with `signal(t) = 1 - slope * t`.

    Euler (DDIM) and iPNDM are written in `t` and `dx/dt = (x - D) / t` alone, which holds on both paths. The
    exponential integrators (DPM-Solver++, UniPC) also need the log signal-to-noise ratio `log(signal(t) / t)`, which
    is -inf at pure noise on the flow path (`signal(1) = 0`).
    """

    name: str
    slope: float

    def signal(self, t: float) -> float:
        return 1.0 - self.slope * t

    def log_snr(self, t: float) -> float:
        """`log(signal(t) / t)` for t > 0; -inf where the signal is gone."""
        signal = self.signal(t)
        return math.log(signal / t) if signal > 0 else -math.inf

    def from_log_snr(self, log_snr: np.ndarray) -> np.ndarray:
        """The `t` whose `log_snr(t)` is each value of `log_snr` (its inverse: `(1 - slope t) / t = exp(lambda)`)."""
        return 1.0 / (np.exp(np.asarray(log_snr, dtype=np.float64)) + self.slope)


#: VP models, in sigma space: `x = x0 + sigma * noise`.
SIGMA_PATH = OdePath("sigma", 0.0)
#: Flow-matching models: `x = (1 - sigma) * x0 + sigma * noise`.
FLOW_PATH = OdePath("flow", 1.0)

PredictionType = Literal["epsilon", "v_prediction", "sample", "flow_prediction"]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: What flow-matching models predict (the velocity `noise - x0`), named as diffusers' multistep schedulers name it.
FLOW_PREDICTION = "flow_prediction"
TIME_SHIFT_TYPES = ("exponential", "linear")
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


def betas_from_config(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    trained_betas: list[float] | np.ndarray | None = None,
    rescale_betas_zero_snr: bool = False,
    snr_shift_scale: float = 1.0,
) -> np.ndarray:
    """The betas of a diffusers beta config, in float64.

    Follows diffusers' definitions of the `linear`, `scaled_linear` and `squaredcos_cap_v2` schedules, of CogVideoX's
    SNR shift (`snr_shift_scale`: every SNR divided by it, `alphabar / (s + (1 - s) alphabar)`) and of zero-SNR
    rescaling (Lin et al. 2023, Algorithm 1: the last beta becomes 1), in that order, as `CogVideoXDDIMScheduler`
    applies them.
    """
    if not snr_shift_scale > 0:
        raise ValueError(f"snr_shift_scale must be > 0, got {snr_shift_scale}")
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
    if snr_shift_scale == 1.0 and not rescale_betas_zero_snr:
        return betas
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod = alphas_cumprod / (snr_shift_scale + (1.0 - snr_shift_scale) * alphas_cumprod)
    if rescale_betas_zero_snr:
        sqrt_ac = np.sqrt(alphas_cumprod)
        first, last = sqrt_ac[0], sqrt_ac[-1]
        alphas_cumprod = ((sqrt_ac - last) * first / (first - last)) ** 2
    return 1.0 - np.concatenate([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])


def cumulative_alphas(betas: np.ndarray, rescale_betas_zero_snr: bool = False) -> np.ndarray:
    """The cumulative product of `1 - beta`, in float64. Under zero-SNR rescaling its last value (0) is replaced by
    2^-24 so that sigma stays finite, as diffusers' Euler scheduler does, or by half the one before where that is
    smaller still (rescaled linear betas reach 4e-9 a step earlier), so that sigma keeps rising with the timestep."""
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    if rescale_betas_zero_snr:
        alphas_cumprod[-1] = min(2.0**-24, alphas_cumprod[-2] / 2)
    return alphas_cumprod


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

    @classmethod
    def from_config(cls, config: dict) -> "VPNoiseSchedule":
        """The noise schedule a diffusers VP scheduler config describes (its beta keys, diffusers' defaults)."""
        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
        keys += ("rescale_betas_zero_snr", "snr_shift_scale")
        betas = betas_from_config(**{k: config[k] for k in keys if k in config})
        return cls(cumulative_alphas(betas, bool(config.get("rescale_betas_zero_snr"))))

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


def is_flow_scheduler_config(config: dict) -> bool:
    """Whether a diffusers scheduler config describes a flow-matching model: FlowMatchEuler's kind (SD3, Flux), or a
    multistep scheduler sampling through flow sigmas (`use_flow_sigmas`, as Wan, Sana and HiDream ship UniPC /
    DPM-Solver)."""
    return (
        "FlowMatch" in str(config.get("_class_name", "")) or "shift" in config or bool(config.get("use_flow_sigmas"))
    )


#: The keys of a flow-sigmas multistep config that mean what FlowMatchEuler's keys of the same name mean.
_FLOW_SIGMAS_SHARED_KEYS = ("num_train_timesteps", "use_dynamic_shifting", "time_shift_type", "shift_terminal")


def flow_match_config(config: dict) -> dict:
    """A flow-matching scheduler config in FlowMatchEuler's terms.

    A multistep scheduler that samples through flow sigmas (`UniPCMultistepScheduler` / `DPMSolverMultistepScheduler`
    with `use_flow_sigmas=True` and `prediction_type="flow_prediction"`, as Wan, Sana and HiDream ship them) shifts
    its sigmas by `flow_shift` as FlowMatchEuler does by `shift`: its config becomes `{"shift": flow_shift, ...}` with
    `use_flow_sigmas: True` kept, which marks its own default spacing (`linspace(1, 1/T, N + 1)[:-1]`, shifted).
    FlowMatchEuler-style configs are returned unchanged.
    """
    if not config.get("use_flow_sigmas"):
        return dict(config)
    if config.get("prediction_type", FLOW_PREDICTION) != FLOW_PREDICTION:
        raise ValueError(
            f"use_flow_sigmas=True needs prediction_type={FLOW_PREDICTION!r}, got {config.get('prediction_type')!r}"
        )
    translated = {key: config[key] for key in _FLOW_SIGMAS_SHARED_KEYS if key in config}
    shift = config["flow_shift"] if "flow_shift" in config else config.get("shift", 1.0)  # translated already
    return {**translated, "shift": float(shift), "use_flow_sigmas": True}


def is_vp_scheduler_config(config: dict) -> bool:
    """Whether a diffusers scheduler config describes a discrete VP (DDPM-style) noise schedule, not flow matching."""
    return not is_flow_scheduler_config(config) and "beta_start" in config


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
    """The denoiser D(x; sigma), i.e. the model's x0 estimate, from a model output at the solver state `x`.

    On the sigma path: epsilon: `x0 = x - sigma * eps`; v_prediction (Salimans & Ho 2022): `x0 = alpha * x_vp -
    sigma_vp * v`, which in sigma space is `x / (1 + sigma^2) - sigma * alpha * v`; sample: the output is x0. On the
    flow path, `flow_prediction` (the velocity `noise - x0`, diffusers' name): `x0 = x - sigma * v`.
    """
    if prediction_type in ("epsilon", FLOW_PREDICTION):  # both are the slope (x - x0) / sigma on their path
        return x - sigma * model_output
    if prediction_type == "v_prediction":
        a = alpha(sigma)
        return x * a * a - sigma * a * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(
        f"prediction_type {prediction_type!r} is not supported; choose one of {PREDICTION_TYPES + (FLOW_PREDICTION,)}"
    )


def limit_denoised(
    denoised: torch.Tensor,
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
) -> torch.Tensor:
    """The x0 estimate limited as diffusers' DDPM / DDIM schedulers limit `pred_original_sample`.

    `thresholding`: dynamic thresholding (Saharia et al. 2022): per sample, s = the `dynamic_thresholding_ratio`
    quantile of |x0|, clamped to [1, `sample_max_value`]; x0 is clamped to [-s, s] and divided by s. Otherwise
    `clip_sample` clamps x0 to [-`clip_sample_range`, `clip_sample_range`].
    """
    if thresholding:
        flat = denoised.reshape(denoised.shape[0], -1)
        s = torch.quantile(flat.abs().float(), dynamic_thresholding_ratio, dim=1).to(flat.dtype)
        s = s.clamp(min=1.0, max=sample_max_value)[:, None]
        return (flat.clamp(-s, s) / s).reshape(denoised.shape)
    if clip_sample:
        return denoised.clamp(-clip_sample_range, clip_sample_range)
    return denoised


def flow_shift_factor(
    shift: float = 1.0,
    mu: float | None = None,
    use_dynamic_shifting: bool = False,
    time_shift_type: str = "exponential",
) -> float:
    """The factor `k` of a flow-matching schedule shift `sigma = k / (k + 1 / u - 1)`, as FlowMatchEuler applies it.

    A static shift is `k = shift` (SD3: 3); dynamic shifting (Flux) uses the resolution-dependent `mu`: `k = e^mu`
    for `time_shift_type="exponential"`, `k = mu` for `"linear"`.
    """
    if not use_dynamic_shifting:
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        return float(shift)
    if mu is None:
        raise ValueError("`mu` is needed when use_dynamic_shifting=True (pipelines compute it from the image size)")
    if time_shift_type == "exponential":
        return math.exp(mu)
    if time_shift_type == "linear":
        if not mu > 0:
            raise ValueError(f"mu must be > 0 for time_shift_type='linear', got {mu}")
        return float(mu)
    raise ValueError(f"time_shift_type {time_shift_type!r} is not supported; choose one of {TIME_SHIFT_TYPES}")


def shift_flow_sigmas(u: np.ndarray | list[float], factor: float) -> np.ndarray:
    """Shift unshifted flow sigmas `u` in [0, 1] towards high noise: `k u / (1 + (k - 1) u)`; 0 and 1 are kept."""
    u = np.asarray(u, dtype=np.float64)
    return factor * u / (1.0 + (factor - 1.0) * u)


def unshift_flow_sigmas(sigmas: np.ndarray | list[float], factor: float) -> np.ndarray:
    """The inverse of `shift_flow_sigmas`: what to hand a scheduler that will apply the shift itself."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return sigmas / (factor - (factor - 1.0) * sigmas)
