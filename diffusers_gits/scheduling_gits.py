"""`GITSScheduler`: samples VP (DDPM-style) models (SD 1.x/2.x, SDXL, PixArt, DDPMPipeline and their fine-tunes) on
GITS schedules calibrated for the model."""

import logging
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config

# A pipeline saved with this scheduler names this module in model_index.json; diffusers reloads the component by
# finding the loadable base classes (SchedulerMixin) as attributes of that module.
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin  # noqa: F401

from .noise import (
    FLOW_PREDICTION,
    PREDICTION_TYPES,
    SIGMA_PATH,
    VPNoiseSchedule,
    alpha,
    betas_from_config,
    cumulative_alphas,
    is_flow_scheduler_config,
    is_vp_scheduler_config,
    limit_denoised,
    sigma_space_to_vp,
    vp_to_sigma_space,
)
from .presets import sd15_preset_config
from .schedules import TIMESTEP_SPACINGS, stock_solver_sigmas
from .scheduling_gits_common import _GITSSchedulerBase

# Pipelines saved before the flow scheduler had its own module name this one for it in model_index.json.
from .scheduling_gits_flow_match import GITSFlowMatchScheduler  # noqa: F401
from .solvers import SolverName


logger = logging.getLogger(__name__)


#: DDPM / DDIM config keys that limit the x0 estimate; GITSScheduler honours them.
X0_LIMIT_KEYS = ("clip_sample", "clip_sample_range", "thresholding", "dynamic_thresholding_ratio", "sample_max_value")


class GITSScheduler(_GITSSchedulerBase):
    """Samples VP (DDPM-style) models on GITS time schedules (Chen et al., ICML 2024), with a choice of ODE solver.

    This model inherits from [`SchedulerMixin`] and [`ConfigMixin`]. The schedules are searched by dynamic programming
    on the model's own sampling trajectories by [`GITSScheduler.from_calibration`]; they are stored in the config
    (`gits_sigmas`, one list of VE sigmas per step count) with the calibration's settings and report
    (`calibration`), so `save_pretrained` / `from_pretrained` / `push_to_hub` carry them as plain JSON.

    The sample is kept in the VP-normalised convention (like [`DPMSolverMultistepScheduler`]): `init_noise_sigma` is 1
    and `scale_model_input` is the identity, so the scheduler also works in pipelines that never call them.

    Args:
        num_train_timesteps (`int`, defaults to 1000): training timesteps of the model.
        beta_start (`float`, defaults to 0.0001): first beta.
        beta_end (`float`, defaults to 0.02): last beta.
        beta_schedule (`str`, defaults to `"linear"`): `"linear"`, `"scaled_linear"` or `"squaredcos_cap_v2"`.
        trained_betas (`list[float]`, *optional*): explicit betas, overriding the three above.
        prediction_type (`str`, defaults to `"epsilon"`): `"epsilon"`, `"v_prediction"` or `"sample"`.
        timestep_spacing (`str`, defaults to `"linspace"`): the model's timestep spacing (`"linspace"`, `"leading"`
            or `"trailing"`), which the base schedule follows when no schedule is calibrated: the schedule the stock
            diffusers scheduler of `solver` runs with it (`diffusers_gits.schedules.stock_solver_sigmas`).
        steps_offset (`int`, defaults to 0): offset added to `"leading"` timesteps.
        rescale_betas_zero_snr (`bool`, defaults to `False`): rescale betas to zero terminal SNR (Lin et al. 2023).
        snr_shift_scale (`float`, defaults to 1.0): divide every SNR by it, before any zero-SNR rescaling, as
            `CogVideoXDDIMScheduler` does (CogVideoX-2b ships 3.0).
        clip_sample (`bool`, defaults to `False`): clamp the x0 estimate the solver steps with to
            [-`clip_sample_range`, `clip_sample_range`], as DDPM / DDIM do (kept from their configs, so a pixel model
            that samples clipped there samples clipped here).
        clip_sample_range (`float`, defaults to 1.0): the clamp's bound.
        thresholding (`bool`, defaults to `False`): dynamic thresholding of the x0 estimate (Saharia et al. 2022),
            with `dynamic_thresholding_ratio` (defaults to 0.995) and `sample_max_value` (defaults to 1.0); it takes
            precedence over `clip_sample`, as in DDPM.
        solver (`str`, defaults to `"dpmpp_2m"`): `"euler"` (DDIM), `"ipndm"` (variable-step, order <= 4),
            `"dpmpp_2m"` (DPM-Solver++ 2M) or `"unipc"` (UniPC bh2).
        gits_sigmas (`dict[str, list[float]]`, *optional*): calibrated schedules, `{"6": [7 sigmas ending in 0]}`.
        calibration (`dict`, *optional*): how the schedules were calibrated and the calibration report.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    path = SIGMA_PATH

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        snr_shift_scale: float = 1.0,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        solver: SolverName = "dpmpp_2m",
        gits_sigmas: dict[str, list[float]] | None = None,
        calibration: dict[str, Any] | None = None,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r} is not supported; choose one of {PREDICTION_TYPES}")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing {timestep_spacing!r} is not supported; choose one of {TIMESTEP_SPACINGS}"
            )
        betas = betas_from_config(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr,
            snr_shift_scale,
        )  # fmt: skip
        alphas_cumprod = cumulative_alphas(betas, rescale_betas_zero_snr)
        self.noise_schedule = VPNoiseSchedule(alphas_cumprod)
        # As on every diffusers DDPM-family scheduler: training utilities read them.
        self.betas = torch.from_numpy(betas).float()
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.from_numpy(alphas_cumprod).float()
        self.init_noise_sigma = 1.0
        self._init_schedule_state(solver, gits_sigmas)
        # The x0 limits are passed on explicitly when another class is built from this config (see `_adapt_config`):
        # DDPM / DDIM clip by default, so `clip_sample=False` left as a default here would come back True.
        defaulted = self.config.get("_use_default_values")
        if defaulted:
            self.register_to_config(_use_default_values=[key for key in defaulted if key not in X0_LIMIT_KEYS])

    @classmethod
    def _adapt_config(cls, config: dict) -> dict:
        """The config with its x0 limits kept even where they are its class's defaults.

        diffusers passes on only the keys a config set explicitly (`_use_default_values` lists the others), so a stock
        DDPM / DDIM scheduler that clips by default (`clip_sample=True` is their default) would sample unclipped
        under GITS. The config holds the values its class used: keep those.
        """
        defaulted = config.get("_use_default_values")
        if not defaulted:
            return config
        return {**config, "_use_default_values": [key for key in defaulted if key not in X0_LIMIT_KEYS]}

    @classmethod
    def _check_config_family(cls, config: dict) -> None:
        source = config.get("_class_name", "this config")
        if config.get("prediction_type") == FLOW_PREDICTION and not config.get("use_flow_sigmas"):
            raise ValueError(
                f"{source} has prediction_type={FLOW_PREDICTION!r} without use_flow_sigmas=True: it does not say how "
                "its flow model is noised, so neither GITS scheduler can sample it"
            )
        if is_flow_scheduler_config(config):
            raise ValueError(
                f"GITSScheduler is for VP (DDPM-style) models, but {source} is a flow-matching scheduler (SD3, Flux): "
                "use GITSFlowMatchScheduler, or calibrate with GITSScheduler.from_calibration(pipe, ...), which picks it"
            )
        if not is_vp_scheduler_config(config):
            raise ValueError(
                f"GITSScheduler needs a DDPM-style scheduler config with betas, and {source} has none (EDM-style and "
                "other parameterisations are not supported)"
            )

    def _check_same_model(self, theirs: "GITSScheduler") -> None:
        if theirs.config.prediction_type != self.config.prediction_type:
            raise ValueError(
                f"this schedule is for prediction_type={self.config.prediction_type!r} but the pipeline's model "
                f"predicts {theirs.config.prediction_type!r}"
            )
        ours, other = self.noise_schedule, theirs.noise_schedule
        if not np.allclose([ours.sigma_min, ours.sigma_max], [other.sigma_min, other.sigma_max], rtol=1e-2):
            logger.warning(
                "this GITS schedule was made for sigmas %.4g..%.4g, but the pipeline's noise schedule spans %.4g..%.4g: "
                "it was calibrated for another model family or beta schedule",
                ours.sigma_min, ours.sigma_max, other.sigma_min, other.sigma_max,
            )  # fmt: skip

    @classmethod
    def from_preset(cls, name: str = "sd15", coeff: float = 1.2, solver: SolverName = "dpmpp_2m") -> "GITSScheduler":
        """A scheduler with the GITS authors' published schedules, with no calibration and no network.

        `"sd15"`: the Stable Diffusion 1.5 tables of Chen et al. (ICML 2024, arXiv 2405.11326), with a row for every
        step count 2-20, each ending at sigma_min, which is replaced by 0. `coeff` 1.2 is the published default; the
        authors' tables for 0.80-1.50 in steps of 0.05 come as ComfyUI ships them (`comfy_extras/nodes_gits.py`; a
        larger coeff puts more steps at low noise). Other step counts stretch the nearest row, sigma_min included,
        log-linearly to N + 1 values and set the last to 0 (ComfyUI's rule; `diffusers_gits.schedules.
        published_gits_sd15`, also the `gits_sd15_published` baseline). Limits: searched on SD1.5 at guidance 7.5
        with an unstated teacher and warm-up, so they fit models on SD's noise schedule (SD 1.x, SDXL and their
        fine-tunes, epsilon prediction) only approximately. Calibrate for your own model to do better.
        """
        return cls(**sd15_preset_config(name, coeff, solver))

    @property
    def _prediction_type(self) -> str:
        return self.config.prediction_type

    def _prediction_channels(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """A model with a learned variance (`variance_type` "learned" / "learned_range" in the pipeline's DDPM config,
        kept in this one: DeepFloyd IF, Kandinsky) outputs it as extra channels, which its pipeline leaves in for such
        a config; the deterministic solvers drop them, as DDPM splits them off."""
        learned = self.config.get("variance_type") in ("learned", "learned_range")
        if learned and model_output.shape[1] == 2 * sample.shape[1]:
            return model_output[:, : sample.shape[1]]
        return model_output

    def _limit(self, denoised: torch.Tensor) -> torch.Tensor:
        c = self.config
        return limit_denoised(
            denoised, c.clip_sample, c.clip_sample_range, c.thresholding, c.dynamic_thresholding_ratio,
            c.sample_max_value,
        )  # fmt: skip

    def _base_schedule(self, num_inference_steps: int, mu: float | None) -> np.ndarray:
        # What the pipeline runs today with this solver: the stock diffusers scheduler's spacing for it.
        return stock_solver_sigmas(dict(self.config), self.config.solver, num_inference_steps)

    def to_solver_state(self, sample: torch.Tensor, sigma: float) -> torch.Tensor:
        """The pipeline's VP-normalised sample in the solvers' sigma-space coordinates."""
        return vp_to_sigma_space(sample, sigma)

    def from_solver_state(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """A sigma-space state back in the pipeline's VP-normalised convention."""
        return sigma_space_to_vp(x, sigma)

    def schedule_for(self, num_inference_steps: int) -> np.ndarray:
        """The sigmas (`num_inference_steps + 1` values, ending in 0) that `set_timesteps(num_inference_steps)` uses.

        The calibrated schedule when there is one; otherwise the nearest calibrated schedule stretched log-linearly,
        or the base schedule (what `solver`'s stock diffusers scheduler runs) when nothing is calibrated. The fallback
        is logged.
        """
        return self._table_or_fallback(num_inference_steps)[0]

    def sigmas_for(self, num_inference_steps: int) -> list[float]:
        """The schedule for N steps as `pipe(..., sigmas=...)` of `EulerDiscreteScheduler` accepts it (N + 1 values)."""
        return self.schedule_for(num_inference_steps).tolist()

    def timesteps_for(self, num_inference_steps: int) -> list[int]:
        """The schedule for N steps as integer timesteps (N values, no duplicates), e.g. for
        `DPMSolverMultistepScheduler`, which accepts only integer `timesteps`; rounding moves sigma slightly."""
        timesteps = np.round(self.noise_schedule.sigma_to_t(self.schedule_for(num_inference_steps)[:-1])).astype(int)
        if len(np.unique(timesteps)) != len(timesteps):
            raise ValueError(
                f"the {num_inference_steps}-step schedule has points closer than one timestep "
                f"({timesteps.tolist()}); use sigmas_for() with a scheduler that accepts sigmas"
            )
        return timesteps.tolist()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[float] | None = None,
        sigmas: list[float] | None = None,
        **kwargs,
    ) -> None:
        """Set the schedule for sampling: exactly one of `num_inference_steps`, `timesteps` or `sigmas`.

        Args:
            num_inference_steps (`int`, *optional*): steps; the calibrated schedule for that count (see
                [`~GITSScheduler.schedule_for`]).
            device (`str` or `torch.device`, *optional*): where `timesteps` go.
            timesteps (`list[float]`, *optional*): custom descending timesteps; a final step to sigma 0 is added.
            sigmas (`list[float]`, *optional*): custom descending sigmas including the final value (N + 1 values).
        """
        if kwargs.get("mu") is not None:
            raise ValueError(
                "GITSScheduler is for VP (DDPM-style) models and got `mu`, which flow-matching pipelines (SD3, Flux) "
                "pass: use GITSFlowMatchScheduler, or calibrate with GITSScheduler.from_calibration(pipe, ...)"
            )
        unexpected = sorted(k for k, v in kwargs.items() if k != "mu" and v is not None)
        if unexpected:
            raise TypeError(f"set_timesteps got unexpected arguments {unexpected}")
        given = [
            name
            for name, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps), ("sigmas", sigmas))
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"pass exactly one of `num_inference_steps`, `timesteps` or `sigmas`, got {given or 'none'}"
            )

        if sigmas is not None:
            schedule = np.asarray(sigmas, dtype=np.float64)
            if schedule.ndim != 1 or len(schedule) < 2 or np.any(~np.isfinite(schedule)) or np.any(schedule < 0):
                raise ValueError(f"sigmas must be finite, non-negative and at least 2 values, got {list(sigmas)}")
            if np.any(np.diff(schedule) >= 0):
                raise ValueError(f"sigmas must be strictly decreasing, got {list(sigmas)}")
        elif timesteps is not None:
            t = np.asarray(timesteps, dtype=np.float64)
            if t.ndim != 1 or len(t) < 1 or np.any(np.diff(t) >= 0):
                raise ValueError(f"timesteps must be strictly decreasing, got {list(timesteps)}")
            if t[0] > self.config.num_train_timesteps - 1 or t[-1] < 0:
                raise ValueError(
                    f"timesteps must lie in [0, {self.config.num_train_timesteps - 1}], got {list(timesteps)}"
                )
            schedule = np.append(self.noise_schedule.t_to_sigma(t), 0.0)
        else:
            schedule = self.schedule_for(num_inference_steps)

        model_timesteps = (
            self.noise_schedule.sigma_to_t(schedule[:-1])
            if timesteps is None
            else np.asarray(timesteps, dtype=np.float64)
        )
        self._set_schedule(schedule, model_timesteps, device)

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Identity: the sample is already in the VP-normalised convention the model expects."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise clean samples to `timesteps` (fractional allowed), VP-normalised: `alpha * (x0 + sigma * noise)`."""
        sigmas = self.noise_schedule.t_to_sigma(timesteps.detach().cpu().double().numpy().reshape(-1))
        sigma = torch.from_numpy(sigmas).to(device=original_samples.device, dtype=torch.float32)
        scale = torch.from_numpy(np.array([alpha(s) for s in sigmas])).to(original_samples.device, torch.float32)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        noisy = scale.view(shape) * (original_samples.float() + sigma.view(shape) * noise.float())
        return noisy.to(original_samples.dtype)

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Not for VP models: flow-matching img2img pipelines (SD3, Flux) call it, so refuse clearly."""
        raise ValueError(
            "GITSScheduler is for VP (DDPM-style) models, but this pipeline called scale_noise, as flow-matching "
            "pipelines (SD3, Flux) do: use GITSFlowMatchScheduler"
        )
