"""What both GITS schedulers share: the schedule table, its fallbacks, the step counter, the solver step, and the
thin delegates to the Hub, the record file and the calibration (each in its own module).

`GITSScheduler` (`scheduling_gits`) is for VP (DDPM-style) models, `GITSFlowMatchScheduler`
(`scheduling_gits_flow_match`) for flow-matching models; only the noise parameterisation differs, and it comes from
`diffusers_gits.noise`.
"""

import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from .model_card import push_schedule
from .noise import OdePath, denoised_from_model_output
from .schedule_format import SCHEDULER_CLASSES
from .schedules import PRESETS, check_step_count, loglinear_interpolate, preset_schedule, validate_schedule_table
from .serialization import fetch_calibration_record, fetch_schedule_config, save_record, split_load_options
from .solvers import SolverHistory, get_solver


logger = logging.getLogger(__name__)


class ScheduleTable(dict):
    """`gits_sigmas` as the config holds it: a plain dict (JSON writes it as one) with a one-line repr. diffusers
    prints the config values a stock scheduler does not expect when it is built from a GITS config
    (`EulerDiscreteScheduler.from_config(gits.config)`): the table's numbers would fill the warning."""

    def __repr__(self) -> str:
        return f"<GITS schedules for {', '.join(sorted(self, key=int))} steps>"


#: `diffusers_gits.calibration.calibrate`, registered by its module (`register_calibration`) when the package is
#: imported: the calibration machinery imports the schedulers, so the schedulers do not import it back.
_CALIBRATE = None


def register_calibration(calibrate) -> None:
    """Make `calibrate` the function behind `from_calibration` (called once, by `diffusers_gits.calibration.stages`)."""
    global _CALIBRATE
    _CALIBRATE = calibrate


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
    #: The classes a saved config may name (`_class_name`, one of `SCHEDULER_CLASSES`), filled as they are defined.
    registry: dict[str, type["_GITSSchedulerBase"]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__name__ in SCHEDULER_CLASSES and cls.__module__.startswith("diffusers_gits."):
            _GITSSchedulerBase.registry[cls.__name__] = cls

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
        download, kwargs = split_load_options(kwargs)
        config = fetch_schedule_config(pretrained_model_name_or_path, subfolder=subfolder, **download)
        scheduler, unused = scheduler_from_config(config, return_unused_kwargs=True, **kwargs)
        # What the caller passed and nothing took; the file's own keys a GITS scheduler does not read (a PNDM config's
        # `skip_prk_steps`, kept from the scheduler it was made from) are not the caller's to fix.
        unused = {key: value for key, value in unused.items() if key in kwargs}
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
        save_record(self.calibration_record, save_directory)  # first, so that push_to_hub=True uploads it too
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


def scheduler_from_config(config: dict, **kwargs) -> _GITSSchedulerBase:
    """Build the GITS scheduler class a saved config names (`_class_name`)."""
    name = config.get("_class_name")
    if name not in _GITSSchedulerBase.registry:
        raise ValueError(f"{name!r} is not a GITS scheduler; expected one of {sorted(_GITSSchedulerBase.registry)}")
    return _GITSSchedulerBase.registry[name].from_config(config, **kwargs)
