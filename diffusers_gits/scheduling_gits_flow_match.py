"""`GITSFlowMatchScheduler`: samples flow-matching models (SD3, Flux, Wan, ...) on GITS schedules calibrated for the
model, with `FlowMatchEulerDiscreteScheduler`'s config keys."""

import logging
from typing import Any, Literal

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config

# A pipeline saved with this scheduler names this module in model_index.json; diffusers reloads the component by
# finding the loadable base classes (SchedulerMixin) as attributes of that module.
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401

from .errors import WrongFamilyError
from .noise import (
    FLOW_PATH,
    FLOW_PREDICTION,
    TIME_SHIFT_TYPES,
    flow_match_config,
    flow_shift_factor,
    is_flow_scheduler_config,
    shift_flow_sigmas,
    unshift_flow_sigmas,
)
from .presets import oss_preset_config
from .schedules import flow_stock_sigmas
from .scheduling_gits_common import _GITSSchedulerBase
from .solvers import SolverName


logger = logging.getLogger(__name__)


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
        return cls(**oss_preset_config(name, solver, config))

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
