"""GITS schedulers: drop-in diffusers schedulers that sample on GITS schedules calibrated for the model.

`GITSScheduler` is for VP (DDPM-style) models: SD 1.x/2.x, SDXL, PixArt, DDPMPipeline and their fine-tunes.
`GITSFlowMatchScheduler` is for flow-matching models (SD3, Flux) and follows `FlowMatchEulerDiscreteScheduler`'s
config keys. Both keep the same schedule table (`gits_sigmas`), calibration record and solvers; only the noise
parameterisation differs, and it comes from `diffusers_gits.noise`.
"""

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput

from .errors import WrongFamilyError
from .noise import (
    FLOW_PATH,
    FLOW_PREDICTION,
    PREDICTION_TYPES,
    SIGMA_PATH,
    TIME_SHIFT_TYPES,
    OdePath,
    VPNoiseSchedule,
    alpha,
    betas_from_config,
    cumulative_alphas,
    denoised_from_model_output,
    flow_match_config,
    flow_shift_factor,
    is_flow_scheduler_config,
    is_vp_scheduler_config,
    limit_denoised,
    shift_flow_sigmas,
    sigma_space_to_vp,
    unshift_flow_sigmas,
    vp_to_sigma_space,
)
from .schedules import (
    OSS_TABLES,
    PRESETS,
    TIMESTEP_SPACINGS,
    check_step_count,
    flow_stock_sigmas,
    load_gits_sd15_coeff_tables,
    load_published_tables,
    loglinear_interpolate,
    preset_schedule,
    published_gits_sd15,
    stock_solver_sigmas,
    validate_schedule_table,
)
from .solvers import SolverHistory, get_solver


logger = logging.getLogger(__name__)


class ScheduleTable(dict):
    """`gits_sigmas` as the config holds it: a plain dict (JSON writes it as one) with a one-line repr. diffusers
    prints the config values a stock scheduler does not expect when it is built from a GITS config
    (`EulerDiscreteScheduler.from_config(gits.config)`): the table's numbers would fill the warning."""

    def __repr__(self) -> str:
        return f"<GITS schedules for {', '.join(sorted(self, key=int))} steps>"


#: `diffusers_gits.calibration.calibrate`, registered by that module (`register_calibration`) when the package is
#: imported: the calibration machinery imports the schedulers, so the schedulers do not import it back.
_CALIBRATE = None


def register_calibration(calibrate) -> None:
    """Make `calibrate` the function behind `from_calibration` (called once, by `diffusers_gits.calibration`)."""
    global _CALIBRATE
    _CALIBRATE = calibrate


SolverName = Literal["euler", "ipndm", "dpmpp_2m", "unipc"]


@dataclass
class GITSSchedulerOutput(BaseOutput):
    """Output of [`GITSScheduler.step`] and [`GITSFlowMatchScheduler.step`].

    Args:
        prev_sample (`torch.Tensor`): the sample at the next noise level, in the pipeline's convention.
        pred_original_sample (`torch.Tensor`): the model's x0 estimate at the current noise level.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class _GITSSchedulerBase(SchedulerMixin, ConfigMixin):
    """What both GITS schedulers share: the schedule table, its fallbacks, the step counter and the solver step.

    Subclasses set `path` and implement `_base_schedule`, `to_solver_state`, `from_solver_state`,
    `_prediction_type`, `_check_config_family` and `set_timesteps`.
    """

    order = 1
    path: OdePath

    def _init_schedule_state(self, solver: str, gits_sigmas: dict[str, list[float]] | None) -> None:
        self._solver_step = get_solver(solver, self.path)
        self._table = validate_schedule_table(gits_sigmas or {})
        if gits_sigmas is not None:
            self.register_to_config(gits_sigmas=ScheduleTable(gits_sigmas))
        self.num_inference_steps = None
        self.sigmas = None
        self.timesteps = None
        self._history = SolverHistory()
        self._step_index = None
        self._begin_index = None
        self._fallbacks_logged: set[int] = set()
        self._record: dict | None = None

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """Build from a config (of any compatible scheduler); a config of the other model family raises `ValueError`."""
        if config is not None:
            config = dict(config)
            cls._check_config_family(config)
            config = cls._adapt_config(config)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def _adapt_config(cls, config: dict) -> dict:
        """A checked config of another scheduler in this class's terms."""
        return config

    @classmethod
    def from_calibration(cls, pipe, num_inference_steps: int | list[int], **kwargs) -> "_GITSSchedulerBase":
        """Calibrate GITS schedules for `pipe` by running it; see [`diffusers_gits.calibration.calibrate`].

        Returns the scheduler of the pipeline's family: a [`GITSFlowMatchScheduler`] for SD3 / Flux pipelines.
        """
        if _CALIBRATE is None:
            raise RuntimeError("the calibration is not loaded: `import diffusers_gits` (its __init__ loads it)")
        return _CALIBRATE(pipe, num_inference_steps, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | None = None,
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs,
    ) -> "_GITSSchedulerBase":
        """Load a schedule from a local folder or a Hub model repo, strictly.

        Only `scheduler_config.json` is read, and every field is validated before the scheduler is built: a wrong
        class, a malformed table or a newer format raises [`~diffusers_gits.ScheduleLoadError`] naming the source and
        the field. The GITS class named in the file is built (a flow-matching schedule loads as a
        [`GITSFlowMatchScheduler`] whichever GITS class this is called on). `revision`, `token`, `cache_dir`,
        `local_files_only`, `force_download` and `user_agent` go to the download (which honours `HF_HUB_OFFLINE`;
        proxies come from the `HTTPS_PROXY` environment variable, as huggingface_hub >= 1.0 takes them); other keyword
        arguments override config values, e.g. `solver="euler"`. Keyword arguments that are neither are returned with
        `return_unused_kwargs=True`, as `SchedulerMixin.from_pretrained` does, and otherwise named in a warning.
        """
        from .hub import DOWNLOAD_OPTIONS, fetch_calibration_record, fetch_schedule_config

        download = {key: kwargs.pop(key) for key in DOWNLOAD_OPTIONS if key in kwargs}
        if kwargs.pop("proxies", None):
            logger.warning("proxies= is ignored: huggingface_hub >= 1.0 takes proxies from HTTPS_PROXY / HTTP_PROXY")
        for internal in ("_from_pipeline", "_commit_hash"):  # what DiffusionPipeline.from_pretrained passes
            kwargs.pop(internal, None)
        config = fetch_schedule_config(pretrained_model_name_or_path, subfolder=subfolder, **download)
        scheduler, unused = scheduler_from_config(config, return_unused_kwargs=True, **kwargs)
        unused = {key: value for key, value in unused.items() if not key.startswith("_")}  # the file's own metadata
        if unused and not return_unused_kwargs:
            logger.warning(
                "from_pretrained ignored %s: neither download options nor settings of %s (a misspelling?)",
                sorted(unused),
                type(scheduler).__name__,
            )
        # Fetched here (it is small), not on first read: a property that downloads fails offline where the user
        # only wanted to save the pipeline.
        scheduler.calibration_record = fetch_calibration_record(
            pretrained_model_name_or_path, subfolder=subfolder, **download
        )
        return (scheduler, unused) if return_unused_kwargs else scheduler

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

        config = json.loads(self.to_json_string())
        return push_schedule(
            config, repo_id, subfolder, commit_message, private, token, revision, create_pr, self.calibration_record
        )

    def check_pipeline(self, pipe) -> None:
        """Check that this schedule fits `pipe` before `pipe.scheduler = self`; call it with the pipeline's own scheduler.

        Raises `ValueError` when the pipeline is of the other model family (VP vs flow matching) or its model predicts
        another quantity, and logs a warning when the noise schedule (VP sigma range, flow shift) differs.
        """
        config = dict(pipe.scheduler.config) if hasattr(pipe, "scheduler") else dict(pipe)
        self._check_same_model(type(self).from_config(config))  # from_config refuses the other family

    @property
    def calibrated_steps(self) -> list[int]:
        """The step counts that have a calibrated schedule."""
        return sorted(self._table)

    @property
    def calibration_record(self) -> dict | None:
        """Everything the calibration recorded: settings, model calls by stage, timings and the report.

        `config.calibration` keeps only a summary (model, pipeline, solver, the choice per step count); the record is
        saved beside the config as `calibration_report.json` and read by `from_pretrained`. `None` for presets
        and uncalibrated schedulers.
        """
        return self._record

    @calibration_record.setter
    def calibration_record(self, record: dict | None) -> None:
        self._record = record

    @property
    def calibration_report(self) -> dict | None:
        """Per step count: the choice, whether it beat every baseline with confidence, every candidate's held-out
        error, the default schedule's, and a one-line summary (from `calibration_record`)."""
        return (self.calibration_record or {}).get("report")

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """Save `scheduler_config.json` (as diffusers does) and, for a calibrated schedule, `calibration_report.json`;
        an older `calibration_report.json` in the folder is removed when this scheduler has no record, so that it is
        never read back as this schedule's."""
        from .hub import REPORT_NAME, write_record

        record = self.calibration_record
        if record is not None:  # first, so that push_to_hub=True uploads it too
            os.makedirs(save_directory, exist_ok=True)
            write_record(record, save_directory)
        elif os.path.isfile(os.path.join(save_directory, REPORT_NAME)):
            os.remove(os.path.join(save_directory, REPORT_NAME))
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Set the index of the first step (img2img-style pipelines start part-way down the schedule)."""
        self._begin_index = begin_index

    def _table_or_fallback(self, num_inference_steps: int, mu: float | None = None) -> tuple[np.ndarray, bool]:
        """The schedule for N steps and whether it comes from the calibrated table (exact or stretched)."""
        num_inference_steps = check_step_count(num_inference_steps)
        if num_inference_steps in self._table:
            return self._table[num_inference_steps].copy(), True
        preset = self.config.calibration or {}
        if preset.get("preset") in PRESETS:
            # The published tables' own rule beyond their rows, as the baselines of the same name use.
            return preset_schedule(preset["preset"], num_inference_steps, preset.get("coeff")), True
        warn = logger.warning if num_inference_steps not in self._fallbacks_logged else logger.debug
        self._fallbacks_logged.add(num_inference_steps)  # a pipeline calls this on every image: say it once per N
        if self._table:
            nearest = min(self._table, key=lambda k: (abs(k - num_inference_steps), -k))
            warn(
                "%s has no schedule calibrated for %d steps (calibrated: %s); using the %d-step schedule "
                "stretched log-linearly.",
                type(self).__name__,
                num_inference_steps,
                self.calibrated_steps,
                nearest,
            )
            return loglinear_interpolate(self._table[nearest], num_inference_steps), True
        warn(
            "%s is not calibrated; using the stock default schedule for %d steps. Calibrate with "
            "%s.from_calibration(pipe, ...) to get GITS schedules.",
            type(self).__name__,
            num_inference_steps,
            type(self).__name__,
        )
        return self._base_schedule(num_inference_steps, mu), False

    def _limit(self, denoised: torch.Tensor) -> torch.Tensor:
        """The x0 estimate the solver steps with (the VP scheduler clips or thresholds it when configured to)."""
        return denoised

    def _prediction_channels(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The model output's prediction channels (the VP scheduler drops learned-variance channels)."""
        return model_output

    def _set_schedule(self, schedule: np.ndarray, model_timesteps: np.ndarray, device) -> None:
        self.num_inference_steps = len(schedule) - 1
        self.sigmas = torch.from_numpy(np.asarray(schedule, dtype=np.float64)).float()
        self.timesteps = torch.from_numpy(np.asarray(model_timesteps, dtype=np.float64)).float().to(device)
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
            sample (`torch.Tensor`): the current sample, in the pipeline's convention.
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

        model_output = self._prediction_channels(model_output, sample)
        x = self.to_solver_state(sample.to(torch.float32), sigma)
        denoised = self._limit(
            denoised_from_model_output(model_output.to(torch.float32), x, sigma, self._prediction_type)
        )
        x_next, self._history = self._solver_step(x, denoised, sigma, sigma_next, self._history)
        prev_sample = self.from_solver_state(x_next, sigma_next).to(model_output.dtype)
        denoised = denoised.to(model_output.dtype)
        self._step_index += 1

        if not return_dict:
            return (prev_sample, denoised)
        return GITSSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


#: What a scheduler config keeps of its calibration record (see `calibration_record`).
SUMMARY_KEYS = (
    "format_version", "package_version", "created", "model", "pipeline_class", "pipe_kwargs", "family", "mu", "solver",
    "preset", "coeff", "source", "table_shift", "mu_per_step",
)  # fmt: skip


def calibration_summary(record: dict) -> dict:
    """The short calibration summary a scheduler config holds: who made it on what, and the choice per step count."""
    summary = {key: record[key] for key in SUMMARY_KEYS if key in record}
    report = record.get("report") or {}
    if report:
        summary["chosen"] = {k: entry["chosen"] for k, entry in report.items()}
    return summary


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
        if name != "sd15":
            flow = " (GITSFlowMatchScheduler.from_preset)" if name in PRESETS else ""
            raise ValueError(f"preset {name!r} does not exist for GITSScheduler{flow}; available: ['sd15']")
        rows = {k: published_gits_sd15(k, coeff).tolist() for k in range(2, 21)}  # refuses an unknown coeff
        return cls(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
            steps_offset=1,
            solver=solver,
            gits_sigmas={str(k): sigmas for k, sigmas in rows.items()},
            calibration={
                "format_version": 1, "preset": name, "coeff": float(coeff),
                "source": load_gits_sd15_coeff_tables()["source"],
            },
        )  # fmt: skip

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


class GITSFlowMatchScheduler(_GITSSchedulerBase):
    """Samples flow-matching models (SD3, Flux) on GITS time schedules, with a choice of ODE solver.

    The flow-matching counterpart of [`GITSScheduler`], with `FlowMatchEulerDiscreteScheduler`'s config keys (so
    `from_config(pipe.scheduler.config)` keeps the model's shift settings) and its conventions: sigmas in [0, 1], the
    model predicts the velocity `noise - x0`, timesteps are `sigma * num_train_timesteps`, and the sample is the
    pipeline's own (`x = (1 - sigma) x0 + sigma * noise`). Schedules are stored shifted, as they are sampled.

    Shifting and `mu`: a calibration records the shift it was made for (`calibration["mu"]` under dynamic shifting,
    which Flux computes from the image size). Sampling with another `mu` (another resolution) maps the calibrated
    schedule through the inverse shift at the calibration's `mu` and the shift at the new one, and warns once: the
    schedule was not calibrated at that resolution.

    Custom `sigmas` (Flux always passes some): `linspace(1, 1/N, N)` is what Flux sends when the user asked for
    nothing, so it is read as "N steps" and the calibrated N-step schedule wins (a one-time warning says so and how to
    opt out: `replace_default_sigmas=False`); any other sigmas are the caller's own and are shifted as FlowMatchEuler
    shifts them. `sigmas_for(N)` exports a calibrated schedule in
    that unshifted form, so a stock FlowMatchEuler scheduler reproduces it.

    Args:
        num_train_timesteps (`int`, defaults to 1000): training timesteps; the model's timestep is `sigma * this`.
        shift (`float`, defaults to 1.0): static shift (SD3: 3.0).
        use_dynamic_shifting (`bool`, defaults to `False`): shift by the resolution-dependent `mu` (Flux).
        base_shift (`float`, defaults to 0.5): read by pipelines to compute `mu`.
        max_shift (`float`, defaults to 1.15): read by pipelines to compute `mu`.
        base_image_seq_len (`int`, defaults to 256): read by pipelines to compute `mu`.
        max_image_seq_len (`int`, defaults to 4096): read by pipelines to compute `mu`.
        time_shift_type (`str`, defaults to `"exponential"`): dynamic shift form, `"exponential"` or `"linear"`.
        replace_default_sigmas (`bool`, defaults to `True`): read custom sigmas equal to `linspace(1, 1/N, N)` (what
            Flux passes when the user asked for nothing) as "N steps" and sample the calibrated schedule, with a
            one-time warning; `False` samples any custom sigmas as given.
        solver (`str`, defaults to `"dpmpp_2m"`): `"euler"` (FlowMatchEuler's step), `"ipndm"`, `"dpmpp_2m"` or
            `"unipc"`.
        gits_sigmas (`dict[str, list[float]]`, *optional*): calibrated schedules, `{"6": [1.0, ..., 0.0]}`.
        calibration (`dict`, *optional*): how the schedules were calibrated (with `mu`) and the calibration report.
    """

    _compatibles = ["FlowMatchEulerDiscreteScheduler"]
    path = FLOW_PATH
    _prediction_type = FLOW_PREDICTION

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: str = "exponential",
        replace_default_sigmas: bool = True,
        solver: SolverName = "dpmpp_2m",
        gits_sigmas: dict[str, list[float]] | None = None,
        calibration: dict[str, Any] | None = None,
    ):
        if time_shift_type not in TIME_SHIFT_TYPES:
            raise ValueError(f"time_shift_type {time_shift_type!r} is not supported; choose one of {TIME_SHIFT_TYPES}")
        flow_shift_factor(shift)  # refuses shift <= 0
        self._init_schedule_state(solver, gits_sigmas)
        for steps, sigmas in self._table.items():
            if sigmas[0] > 1:
                raise ValueError(f"gits_sigmas[{str(steps)!r}]: flow sigmas must lie in [0, 1], got {sigmas.tolist()}")
        self._reshifts_logged: set[tuple[int, float]] = set()
        self._default_sigmas_warned = False

    @classmethod
    def _adapt_config(cls, config: dict) -> dict:
        """A flow-sigmas multistep config (Wan's, Sana's UniPC / DPM-Solver) in FlowMatchEuler's terms."""
        return {key: value for key, value in flow_match_config(config).items() if key != "use_flow_sigmas"}

    @classmethod
    def _check_config_family(cls, config: dict) -> None:
        if not is_flow_scheduler_config(config):
            raise ValueError(
                f"GITSFlowMatchScheduler is for flow-matching models (SD3, Flux), but "
                f"{config.get('_class_name', 'this config')} is a VP (DDPM-style) scheduler: use GITSScheduler"
            )
        if config.get("invert_sigmas"):
            raise ValueError("invert_sigmas=True (Mochi's convention) is not supported by GITSFlowMatchScheduler")
        flow_match_config(config)  # refuses flow sigmas without flow prediction

    @staticmethod
    def unreproduced_options(config: dict) -> list[str]:
        """FlowMatchEuler options set in `config` that change its default schedule but not GITS's fallback."""
        keys = ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
        return [key for key in keys if config.get(key)]

    def _check_same_model(self, theirs: "GITSFlowMatchScheduler") -> None:
        keys = ("shift", "use_dynamic_shifting", "base_shift", "max_shift", "time_shift_type")
        differ = {k: (self.config[k], theirs.config[k]) for k in keys if self.config[k] != theirs.config[k]}
        if differ:
            logger.warning(
                "this GITS schedule was made for other shift settings than the pipeline's (ours, theirs): %s", differ
            )

    @classmethod
    def from_preset(
        cls, name: Literal["oss_flux", "oss_wan"], solver: SolverName = "euler", **config
    ) -> "GITSFlowMatchScheduler":
        """A scheduler with the published OSS tables (Pei et al., "Optimal Stepsize for Diffusion Sampling", 2025) as
        ComfyUI ships them, with no calibration and no network.

        `"oss_flux"`: the 10-step Flux.1 table, with Flux.1's scheduler config (dynamic shifting); `"oss_wan"`: the
        20-step Wan table, with a static shift of 8.0 (ComfyUI's for Wan). Every step count stretches the table
        log-linearly to N + 1 sigmas and sets the last to 0 (ComfyUI's rule). The tables are absolute sigmas, already
        shifted for the model's default resolution (the shift is recorded as `calibration["table_shift"]`); they are
        sampled as given at every `mu` and shift, as ComfyUI does. `sigmas_for(N)` unshifts them with this config's
        shift (and the `mu` given) so that a stock `FlowMatchEulerDiscreteScheduler` with the same settings re-shifts
        them back onto the table: pass your pipeline's settings (e.g. `shift=5.0` for a Wan config) in `config`.
        The tables were searched for Euler (ComfyUI's default sampler for them), the default `solver` here.

        Args:
            name: `"oss_flux"` or `"oss_wan"`.
            solver: the solver to sample with.
            config: scheduler config values that replace the preset's (`shift`, `use_dynamic_shifting`, ...).
        """
        model = name.removeprefix("oss_") if name in ("oss_flux", "oss_wan") else None
        if model is None:
            vp = " (GITSScheduler.from_preset)" if name in PRESETS else ""
            raise ValueError(
                f"preset {name!r} does not exist for GITSFlowMatchScheduler{vp}; available: ['oss_flux', 'oss_wan']"
            )
        for key in ("gits_sigmas", "calibration"):
            if key in config:
                raise TypeError(f"from_preset sets {key!r} itself; got {key}={config[key]!r}")
        defaults = {
            "flux": {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15},
            "wan": {"shift": 8.0, "use_dynamic_shifting": False},
        }[model]
        rows = {k: preset_schedule(name, k).tolist() for k in range(2, 21)}
        return cls(
            **{**defaults, **config},
            solver=solver,
            gits_sigmas={str(k): sigmas for k, sigmas in rows.items()},
            calibration={
                "format_version": 1, "preset": name, "source": load_published_tables()["oss"]["source"],
                "table_shift": OSS_TABLES[model]["shift"],
            },
        )  # fmt: skip

    @property
    def calibration_mu(self) -> float | None:
        """The `mu` the schedules were calibrated at (dynamic shifting only)."""
        return (self.config.calibration or {}).get("mu")

    def calibration_mu_for(self, num_inference_steps: int) -> float | None:
        """The `mu` the pipeline passed at this step count during calibration: `calibration_mu`, or the step count's
        own where the pipeline makes `mu` depend on it (Flux.2)."""
        per_step = (self.config.calibration or {}).get("mu_per_step") or {}
        return per_step.get(str(num_inference_steps), self.calibration_mu)

    def __getattr__(self, name: str) -> Any:
        # Not a property: an AttributeError raised inside one sends Python to __getattr__, which would replace its
        # message with a bare "no attribute".
        if name == "init_noise_sigma":
            raise WrongFamilyError(
                "GITSFlowMatchScheduler is for flow-matching models (SD3, Flux), but this pipeline reads "
                "init_noise_sigma, as VP (DDPM-style) pipelines do: use GITSScheduler"
            )
        return super().__getattr__(name)

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Not for flow models: VP pipelines call it, so refuse clearly."""
        raise ValueError(
            "GITSFlowMatchScheduler is for flow-matching models (SD3, Flux), but this pipeline called "
            "scale_model_input, as VP (DDPM-style) pipelines do: use GITSScheduler"
        )

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Not for flow models: VP img2img pipelines call it, so refuse clearly (flow pipelines use `scale_noise`)."""
        raise ValueError(
            "GITSFlowMatchScheduler is for flow-matching models (SD3, Flux), but this pipeline called add_noise, as "
            "VP (DDPM-style) img2img pipelines do: use GITSScheduler"
        )

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise clean samples to `timestep` (img2img): `(1 - sigma) * sample + sigma * noise`, sigma = t / T."""
        sigma = torch.as_tensor(timestep, dtype=torch.float32, device=sample.device).reshape(-1)
        sigma = (sigma / self.config.num_train_timesteps).view((-1,) + (1,) * (sample.ndim - 1))
        return ((1 - sigma) * sample.float() + sigma * noise.float()).to(sample.dtype)

    def shift_factor(self, mu: float | None = None) -> float:
        """The shift factor `k` (sigma = k u / (1 + (k - 1) u)) for this config and `mu`."""
        return flow_shift_factor(self.config.shift, mu, self.config.use_dynamic_shifting, self.config.time_shift_type)

    @property
    def train_sigma_min(self) -> float:
        """The smallest training sigma as FlowMatchEuler holds it: `1 / T`, shifted under a static shift."""
        sigma_min = 1.0 / self.config.num_train_timesteps
        if self.config.use_dynamic_shifting:
            return sigma_min
        return float(shift_flow_sigmas(sigma_min, self.config.shift))

    def _base_schedule(self, num_inference_steps: int, mu: float | None) -> np.ndarray:
        """FlowMatchEuler's own default for N steps, so an uncalibrated scheduler samples as the stock one does."""
        return flow_stock_sigmas(num_inference_steps, self.shift_factor(mu), self.train_sigma_min)

    def to_solver_state(self, sample: torch.Tensor, sigma: float) -> torch.Tensor:
        """The pipeline's sample is already in the flow path's coordinates."""
        return sample

    def from_solver_state(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """A flow-path state is already in the pipeline's convention."""
        return x

    def schedule_for(self, num_inference_steps: int, mu: float | None = None) -> np.ndarray:
        """The sigmas (`num_inference_steps + 1` values, 1 down to 0) that `set_timesteps` uses at `mu`.

        The calibrated schedule when there is one (stretched log-linearly from the nearest calibrated one otherwise,
        or FlowMatchEuler's default when nothing is calibrated; the fallback is logged). Under dynamic shifting, a
        `mu` other than the calibration's moves the schedule to that `mu`'s shift, with a warning.
        """
        schedule, calibrated = self._table_or_fallback(num_inference_steps, mu)
        calibrated_mu = self.calibration_mu_for(num_inference_steps)
        if not (calibrated and self.config.use_dynamic_shifting and mu is not None and calibrated_mu is not None):
            return schedule
        if abs(mu - calibrated_mu) <= 1e-6:
            return schedule
        key = (num_inference_steps, round(float(mu), 6))
        if key not in self._reshifts_logged:
            self._reshifts_logged.add(key)
            logger.warning(
                "GITS schedules were calibrated at mu=%.4g (another image size); sampling at mu=%.4g re-shifts the "
                "%d-step schedule to it. Calibrate at this resolution for a schedule made for it.",
                calibrated_mu, mu, num_inference_steps,
            )  # fmt: skip
        unshifted = unshift_flow_sigmas(schedule, self.shift_factor(calibrated_mu))
        return shift_flow_sigmas(unshifted, self.shift_factor(mu))

    def sigmas_for(self, num_inference_steps: int, mu: float | None = None) -> list[float]:
        """The schedule for N steps as `pipe(..., sigmas=...)` of `FlowMatchEulerDiscreteScheduler` accepts it.

        N values (no final 0), unshifted, because FlowMatchEuler shifts custom sigmas with its `shift` (or with the
        `mu` the pipeline passes): with the same shift settings and `mu` it then samples at this schedule's sigmas.
        """
        if mu is None:
            mu = self.calibration_mu_for(num_inference_steps)
        schedule = self.schedule_for(num_inference_steps, mu)
        return unshift_flow_sigmas(schedule[:-1], self.shift_factor(mu)).tolist()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | np.ndarray | None = None,
        mu: float | None = None,
        timesteps: list[float] | np.ndarray | None = None,
        **kwargs,
    ) -> None:
        """Set the schedule for sampling, with FlowMatchEuler's arguments.

        Args:
            num_inference_steps (`int`, *optional*): steps; the calibrated schedule for that count (see
                [`~GITSFlowMatchScheduler.schedule_for`]).
            device (`str` or `torch.device`, *optional*): where `timesteps` go.
            sigmas (`list[float]`, *optional*): N unshifted sigmas, shifted as FlowMatchEuler does; the pipeline
                default `linspace(1, 1/N, N)` selects the calibrated N-step schedule instead (see the class docs).
            mu (`float`, *optional*): the dynamic-shift parameter pipelines compute from the image size.
            timesteps (`list[float]`, *optional*): N descending timesteps given to the model as they are; alone, the
                sigmas are `timesteps / T`, shifted (FlowMatchEuler's meaning). With `sigmas` (CogView4 passes both),
                the sigmas set the schedule and the timesteps what the model sees; CogView4's default pair selects
                the calibrated N-step schedule, with the model's timesteps its unshifted sigmas times T, as in that
                pipeline.
        """
        unexpected = sorted(k for k, v in kwargs.items() if v is not None)
        if unexpected:
            raise TypeError(f"set_timesteps got unexpected arguments {unexpected}")
        num_train = self.config.num_train_timesteps
        given = {"sigmas": sigmas, "timesteps": timesteps}
        given = {name: np.asarray(values, dtype=np.float64) for name, values in given.items() if values is not None}
        lengths = {name: len(values) for name, values in given.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"got {lengths['sigmas']} sigmas and {lengths['timesteps']} timesteps; they must match")
        for name, length in lengths.items():
            if num_inference_steps is not None and length != num_inference_steps:
                raise ValueError(f"got {length} {name} for num_inference_steps={num_inference_steps}; they must match")
        if not given and num_inference_steps is None:
            raise ValueError("pass `num_inference_steps`, `sigmas` or `timesteps`")
        custom_sigmas = given.get("sigmas")
        model_timesteps = given.get("timesteps")
        if custom_sigmas is None and model_timesteps is not None:
            # FlowMatchEuler's meaning: timesteps go to the model as given, the sigmas derived from them are shifted.
            custom_sigmas = model_timesteps / num_train

        default = custom_sigmas is not None and _is_pipeline_default(custom_sigmas, model_timesteps, num_train)
        if default and self._table and self.config.replace_default_sigmas:
            steps = len(custom_sigmas)
            if not self._default_sigmas_warned:
                self._default_sigmas_warned = True
                logger.warning(
                    "the pipeline passed its default schedule (sigmas linspace(1, 1/N, N) as Flux sends them, or the "
                    "timesteps linspace(T, 1, N) CogView4 sends, N=%d) when no schedule was asked for: sampling the "
                    "GITS %d-step schedule instead. To sample exactly the sigmas you pass (e.g. to compare with the "
                    "stock schedule), set replace_default_sigmas=False "
                    "(`scheduler.register_to_config(replace_default_sigmas=False)`). Said once per scheduler.",
                    steps,
                    steps,
                )
            schedule = self.schedule_for(steps, mu)
            if model_timesteps is not None:
                # The pipeline gives its model the unshifted time (CogView4: timesteps = T * sigmas before the
                # shift): keep that convention for the calibrated sigmas.
                model_timesteps = unshift_flow_sigmas(schedule[:-1], self.shift_factor(mu)) * num_train
        elif custom_sigmas is not None:
            _check_unit_interval(custom_sigmas, "sigmas" if sigmas is not None else "timesteps / num_train_timesteps")
            schedule = np.append(shift_flow_sigmas(custom_sigmas, self.shift_factor(mu)), 0.0)
        else:
            schedule = self.schedule_for(num_inference_steps, mu)
        if model_timesteps is None:
            model_timesteps = schedule[:-1] * num_train
        self._set_schedule(schedule, model_timesteps, device)


def _is_pipeline_default(sigmas: np.ndarray, timesteps: np.ndarray | None, num_train_timesteps: int) -> bool:
    """Whether a pipeline passed its default schedule, which it sends when the user asked for none: sigmas
    `linspace(1, 1/N, N)` (Flux and most flow pipelines), or timesteps `linspace(T, 1, N)` rounded down with sigmas
    `timesteps / T` (CogView4)."""
    n = len(sigmas)
    if n == 0:
        return False
    if np.allclose(sigmas, np.linspace(1.0, 1.0 / n, n), rtol=0, atol=1e-6):
        return timesteps is None or np.allclose(timesteps, sigmas * num_train_timesteps, rtol=0, atol=1e-3)
    if timesteps is None:
        return False
    cogview = np.linspace(num_train_timesteps, 1.0, n).astype(np.int64).astype(np.float64)
    return np.allclose(timesteps, cogview, rtol=0, atol=1e-3) and np.allclose(
        sigmas, timesteps / num_train_timesteps, rtol=0, atol=1e-6
    )


def _check_unit_interval(values: np.ndarray, name: str) -> None:
    if values.ndim != 1 or len(values) < 1 or not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be a non-empty 1-D list of finite values, got {values.tolist()}")
    if values[0] > 1 or values[-1] <= 0 or np.any(np.diff(values) >= 0):
        raise ValueError(f"{name} must be strictly decreasing within (0, 1], got {values.tolist()}")


GITS_SCHEDULERS = {cls.__name__: cls for cls in (GITSScheduler, GITSFlowMatchScheduler)}


def scheduler_from_config(config: dict, **kwargs) -> _GITSSchedulerBase:
    """Build the GITS scheduler class a saved config names (`_class_name`)."""
    name = config.get("_class_name")
    if name not in GITS_SCHEDULERS:
        raise ValueError(f"{name!r} is not a GITS scheduler; expected one of {sorted(GITS_SCHEDULERS)}")
    return GITS_SCHEDULERS[name].from_config(config, **kwargs)
