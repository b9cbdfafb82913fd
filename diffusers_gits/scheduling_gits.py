"""GITSScheduler: a drop-in diffusers scheduler that samples on GITS schedules calibrated for the model."""

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput

from .noise import (
    PREDICTION_TYPES,
    VPNoiseSchedule,
    alpha,
    alphas_cumprod_from_betas,
    denoised_from_model_output,
    is_vp_scheduler_config,
    sigma_space_to_vp,
    vp_to_sigma_space,
)
from .schedules import TIMESTEP_SPACINGS, loglinear_interpolate, timestep_spacing_sigmas, validate_schedule_table
from .solvers import SolverHistory, get_solver


logger = logging.getLogger(__name__)

SolverName = Literal["euler", "ipndm", "dpmpp_2m", "unipc"]


@dataclass
class GITSSchedulerOutput(BaseOutput):
    """Output of [`GITSScheduler.step`].

    Args:
        prev_sample (`torch.Tensor`): the sample at the next noise level, in the VP-normalised convention.
        pred_original_sample (`torch.Tensor`): the model's x0 estimate at the current noise level.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class GITSScheduler(SchedulerMixin, ConfigMixin):
    """Samples on GITS time schedules (Chen et al., ICML 2024) calibrated for a model, with a choice of ODE solver.

    This model inherits from [`SchedulerMixin`] and [`ConfigMixin`]. The schedules are searched by dynamic programming
    on the model's own sampling trajectories by [`GITSScheduler.from_calibration`]; they are stored in the config
    (`gits_sigmas`, one list of sigmas per step count) with the calibration's settings and report (`calibration`),
    so `save_pretrained` / `from_pretrained` / `push_to_hub` carry them as plain JSON.

    The sample is kept in the VP-normalised convention (like [`DPMSolverMultistepScheduler`]): `init_noise_sigma` is 1
    and `scale_model_input` is the identity, so the scheduler also works in pipelines that never call them.

    Args:
        num_train_timesteps (`int`, defaults to 1000): training timesteps of the model.
        beta_start (`float`, defaults to 0.0001): first beta.
        beta_end (`float`, defaults to 0.02): last beta.
        beta_schedule (`str`, defaults to `"linear"`): `"linear"`, `"scaled_linear"` or `"squaredcos_cap_v2"`.
        trained_betas (`list[float]`, *optional*): explicit betas, overriding the three above.
        prediction_type (`str`, defaults to `"epsilon"`): `"epsilon"`, `"v_prediction"` or `"sample"`.
        timestep_spacing (`str`, defaults to `"linspace"`): spacing of the base schedule used for step counts when no
            schedule is calibrated: `"linspace"`, `"leading"` or `"trailing"`.
        steps_offset (`int`, defaults to 0): offset added to `"leading"` timesteps.
        rescale_betas_zero_snr (`bool`, defaults to `False`): rescale betas to zero terminal SNR (Lin et al. 2023).
        solver (`str`, defaults to `"dpmpp_2m"`): `"euler"` (DDIM), `"ipndm"` (variable-step, order <= 4),
            `"dpmpp_2m"` (DPM-Solver++ 2M) or `"unipc"` (UniPC bh2).
        gits_sigmas (`dict[str, list[float]]`, *optional*): calibrated schedules, `{"6": [7 sigmas ending in 0]}`.
        calibration (`dict`, *optional*): how the schedules were calibrated and the calibration report.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

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
        solver: SolverName = "dpmpp_2m",
        gits_sigmas: dict[str, list[float]] | None = None,
        calibration: dict[str, Any] | None = None,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r} is not supported; choose one of {PREDICTION_TYPES}")
        self._solver_step = get_solver(solver)
        alphas_cumprod = alphas_cumprod_from_betas(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        self.noise_schedule = VPNoiseSchedule(alphas_cumprod)
        self.alphas_cumprod = torch.from_numpy(alphas_cumprod).float()
        self._table = validate_schedule_table(gits_sigmas or {})
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing {timestep_spacing!r} is not supported; choose one of {TIMESTEP_SPACINGS}"
            )

        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.sigmas = None
        self.timesteps = None
        self._history = SolverHistory()
        self._step_index = None
        self._begin_index = None
        self._fallbacks_logged: set[int] = set()

    @classmethod
    def from_calibration(cls, pipe, num_inference_steps: int | list[int], **kwargs) -> "GITSScheduler":
        """Calibrate GITS schedules for `pipe` by running it; see [`diffusers_gits.calibration.calibrate`]."""
        from .calibration import calibrate

        return calibrate(pipe, num_inference_steps, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | None = None,
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs,
    ) -> "GITSScheduler":
        """Load a schedule from a local folder or a Hub model repo, strictly.

        Only `scheduler_config.json` is read, and every field is validated before the scheduler is built: a wrong
        class, a malformed table or a newer format raises [`~diffusers_gits.ScheduleLoadError`] naming the source and
        the field. `revision`, `token`, `cache_dir` and `local_files_only` go to the download (which honours
        `HF_HUB_OFFLINE`); other keyword arguments override config values, e.g. `solver="euler"`.
        """
        from .hub import fetch_schedule_config

        download = {
            key: kwargs.pop(key) for key in ("revision", "token", "cache_dir", "local_files_only") if key in kwargs
        }
        for ignored in ("force_download", "proxies", "user_agent", "_from_pipeline", "_commit_hash"):
            kwargs.pop(ignored, None)
        config = fetch_schedule_config(pretrained_model_name_or_path, subfolder=subfolder, **download)
        scheduler = cls.from_config(config, **kwargs)
        return (scheduler, {}) if return_unused_kwargs else scheduler

    @classmethod
    def from_preset(cls, name: str = "sd15", coeff: float = 1.2, solver: SolverName = "dpmpp_2m") -> "GITSScheduler":
        """A scheduler with the GITS authors' published schedules, with no calibration and no network.

        `"sd15"`: the Stable Diffusion 1.5 table of Chen et al. (ICML 2024, arXiv 2405.11326; the table ComfyUI ships as
        its default), coeff 1.2, for 2-10 and 20 steps (other counts are stretched log-linearly from the next longer
        row); its final sigma_min is replaced by 0. Limits: it was searched on SD1.5 at guidance 7.5 with an unstated
        teacher and warm-up, so it fits models on SD's noise schedule (SD 1.x, SDXL and their fine-tunes, epsilon
        prediction) only approximately, and only `coeff=1.2` is published. Calibrate for your own model to do better.
        """
        from .schedules import load_published_gits_sd15, published_gits_sd15

        if name != "sd15":
            raise ValueError(f"preset {name!r} does not exist; available: ['sd15']")
        table = load_published_gits_sd15()
        if coeff != table["coeff"]:
            raise ValueError(f"the sd15 preset is published for coeff={table['coeff']} only, got coeff={coeff}")
        steps = sorted(int(k) for k in table["schedules"])
        return cls(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
            steps_offset=1,
            solver=solver,
            gits_sigmas={str(k): published_gits_sd15(k).tolist() for k in steps},
            calibration={"format_version": 1, "preset": name, "coeff": coeff, "source": table["source"]},
        )

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        subfolder: str | None = None,
        revision: str | None = None,
        **kwargs,
    ) -> str:
        """Upload the schedule with a model card (`README.md`) and a plot (`schedules.png`) to a Hub model repo.

        One repo can hold many calibrations, one per `subfolder` (e.g. `"sd15/512-cfg7.5"`); the repo is created if
        needed and the usual token handling applies. Returns the commit URL.
        """
        from .hub import push_schedule

        return push_schedule(self, repo_id, subfolder, commit_message, private, token, revision, create_pr)

    def check_pipeline(self, pipe) -> None:
        """Check that this schedule fits `pipe` before `pipe.scheduler = self`; call it with the pipeline's own scheduler.

        Raises `ValueError` for a flow-matching pipeline (SD3, Flux) or a different `prediction_type`, and logs a
        warning when the pipeline's noise schedule has another sigma range (another model family or beta schedule).
        """
        config = dict(pipe.scheduler.config) if hasattr(pipe, "scheduler") else dict(pipe)
        source = config.get("_class_name", type(getattr(pipe, "scheduler", pipe)).__name__)
        if not is_vp_scheduler_config(config):
            raise ValueError(
                f"this GITS schedule is for VP (DDPM-style) models, but the pipeline uses {source}, a flow-matching "
                "scheduler; calibrate a schedule for this pipeline instead"
            )
        theirs = GITSScheduler.from_config(config)
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

    @property
    def calibrated_steps(self) -> list[int]:
        """The step counts that have a calibrated schedule."""
        return sorted(self._table)

    @property
    def calibration_report(self) -> dict | None:
        """Per step count, held-out error to the teacher of the GITS schedule and the default schedule, if stored."""
        return (self.config.calibration or {}).get("report")

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Set the index of the first step (img2img-style pipelines start part-way down the schedule)."""
        self._begin_index = begin_index

    def schedule_for(self, num_inference_steps: int) -> np.ndarray:
        """The sigmas (`num_inference_steps + 1` values, ending in 0) that `set_timesteps(num_inference_steps)` uses.

        The calibrated schedule when there is one; otherwise the nearest calibrated schedule stretched log-linearly,
        or the base schedule (`timestep_spacing`) when nothing is calibrated. The fallback is logged.
        """
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise TypeError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if num_inference_steps in self._table:
            return self._table[num_inference_steps].copy()
        warn = logger.warning if num_inference_steps not in self._fallbacks_logged else logger.debug
        self._fallbacks_logged.add(num_inference_steps)  # a pipeline calls this on every image: say it once per N
        if self._table:
            nearest = min(self._table, key=lambda k: (abs(k - num_inference_steps), -k))
            warn(
                "GITSScheduler has no schedule calibrated for %d steps (calibrated: %s); using the %d-step schedule "
                "stretched log-linearly.",
                num_inference_steps,
                self.calibrated_steps,
                nearest,
            )
            return loglinear_interpolate(self._table[nearest], num_inference_steps)
        warn(
            "GITSScheduler is not calibrated; using the base '%s' schedule for %d steps. Calibrate with "
            "GITSScheduler.from_calibration(pipe, ...) to get GITS schedules.",
            self.config.timestep_spacing,
            num_inference_steps,
        )
        return timestep_spacing_sigmas(
            self.noise_schedule, num_inference_steps, self.config.timestep_spacing, self.config.steps_offset
        )

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
                "pass; flow-matching models are not supported yet."
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

        self.num_inference_steps = len(schedule) - 1
        self.sigmas = torch.from_numpy(schedule).float()
        model_timesteps = (
            self.noise_schedule.sigma_to_t(schedule[:-1])
            if timesteps is None
            else np.asarray(timesteps, dtype=np.float64)
        )
        self.timesteps = torch.from_numpy(model_timesteps).float().to(device)
        self._history = SolverHistory()
        self._step_index = None
        self._begin_index = None

    def index_for_timestep(
        self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None
    ) -> int:
        """Index of `timestep` in the schedule; with a repeated value the second match (diffusers' img2img rule)."""
        schedule_timesteps = self.timesteps if schedule_timesteps is None else schedule_timesteps
        indices = (schedule_timesteps == timestep).nonzero()
        if len(indices) == 0:
            raise ValueError(f"timestep {timestep} is not in the schedule {schedule_timesteps.tolist()}")
        return indices[1 if len(indices) > 1 else 0].item()

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self._begin_index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Identity: the sample is already in the VP-normalised convention the model expects."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> GITSSchedulerOutput | tuple:
        """Advance the sample one step down the schedule with the configured solver.

        Args:
            model_output (`torch.Tensor`): the (guided) model output at `timestep`.
            timestep (`float` or `torch.Tensor`): the current timestep, a value of `self.timesteps`.
            sample (`torch.Tensor`): the current sample (VP-normalised).
            generator (`torch.Generator`, *optional*): unused (the sampler is deterministic); accepted so pipelines
                can pass it.
            return_dict (`bool`, defaults to `True`): return a [`GITSSchedulerOutput`] rather than a tuple.

        Returns:
            [`GITSSchedulerOutput`] or `(prev_sample, pred_original_sample)`.
        """
        if self.num_inference_steps is None:
            raise ValueError("call `set_timesteps` before `step`")
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= self.num_inference_steps:
            raise ValueError(
                f"step called {self._step_index + 1} times for a {self.num_inference_steps}-step schedule"
            )
        sigma = float(self.sigmas[self._step_index])
        sigma_next = float(self.sigmas[self._step_index + 1])

        x = vp_to_sigma_space(sample.to(torch.float32), sigma)
        denoised = denoised_from_model_output(model_output.to(torch.float32), x, sigma, self.config.prediction_type)
        x_next, self._history = self._solver_step(x, denoised, sigma, sigma_next, self._history)
        prev_sample = sigma_space_to_vp(x_next, sigma_next).to(model_output.dtype)
        denoised = denoised.to(model_output.dtype)
        self._step_index += 1

        if not return_dict:
            return (prev_sample, denoised)
        return GITSSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise clean samples to `timesteps` (fractional allowed), VP-normalised: `alpha * (x0 + sigma * noise)`."""
        sigmas = self.noise_schedule.t_to_sigma(timesteps.detach().cpu().double().numpy().reshape(-1))
        sigma = torch.from_numpy(sigmas).to(device=original_samples.device, dtype=torch.float32)
        scale = torch.from_numpy(np.array([alpha(s) for s in sigmas])).to(original_samples.device, torch.float32)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        noisy = scale.view(shape) * (original_samples.float() + sigma.view(shape) * noise.float())
        return noisy.to(original_samples.dtype)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
