"""Running a pipeline under a recording GITS scheduler: every patch calibration makes to a pipeline, in one place.

The recorder swaps in the scheduler, wraps its `step` to record (and optionally replace) states, silences the
pipeline's progress bar, and probes the shift `mu` a flow pipeline computes inside `__call__`; the pipeline is always
restored afterwards.
"""

import functools
import inspect
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CalibrationError
from ..noise import flow_match_config, is_flow_scheduler_config
from ..scheduling_gits import GITSScheduler
from ..scheduling_gits_common import _GITSSchedulerBase
from ..scheduling_gits_flow_match import GITSFlowMatchScheduler
from .execution import Job
from .families import ModelFamily, model_family
from .settings import PER_PROMPT_COUNTS


logger = logging.getLogger(__name__)


@dataclass
class Trajectory:
    """What one teacher or student run of the pipeline leaves behind (solver coordinates, on CPU)."""

    states: list[torch.Tensor] = field(default_factory=list)
    denoised: list[torch.Tensor] = field(default_factory=list)


@contextmanager
def recording(
    pipe,
    scheduler: _GITSSchedulerBase,
    trajectory: Trajectory,
    keep_path: bool,
    inject: Sequence[torch.Tensor | None] | None = None,
):
    """Install `scheduler` on `pipe` with its `step` wrapped to record every state; restore the pipe afterwards.

    With `keep_path=False` only the final state is kept (student runs). With `inject`, step `s` returns
    `inject[s]` (a state in solver coordinates at the next sigma, or `None` for the solver's own step) as the sample
    the pipeline evaluates next: the pipeline then evaluates its model at states chosen by the caller, with its own
    conditioning and guidance. The pipeline's own progress bar is silenced.
    """
    original_scheduler = pipe.scheduler
    original_bar = dict(getattr(pipe, "_progress_bar_config", {}))
    step = scheduler.step

    @functools.wraps(step)
    def recording_step(model_output, timestep, sample, *args, **kwargs):
        index = scheduler.step_index if scheduler.step_index is not None else scheduler.index_for_timestep(timestep)
        sigma = float(scheduler.sigmas[index])
        if not torch.isfinite(model_output).all():
            raise CalibrationError(
                f"the model output is NaN or Inf at grid step {index} (sigma={sigma:.6g}, timestep={float(timestep):.4g})",
                grid_step=index,
                sigma=sigma,
            )
        output = step(model_output, timestep, sample, *args, **kwargs)
        prev_sample, denoised = (
            (output[0], output[1]) if isinstance(output, tuple) else (output.prev_sample, output.pred_original_sample)
        )
        if keep_path:
            trajectory.states.append(scheduler.to_solver_state(sample.float(), sigma).cpu())
            trajectory.denoised.append(denoised.float().cpu())
        if scheduler.step_index == scheduler.num_inference_steps:
            trajectory.states.append(prev_sample.float().cpu())
        if inject is not None and inject[index] is not None:
            sigma_next = float(scheduler.sigmas[index + 1])
            prev_sample = scheduler.from_solver_state(inject[index], sigma_next).to(
                prev_sample.device, prev_sample.dtype
            )
            return (prev_sample, denoised) if isinstance(output, tuple) else type(output)(prev_sample, denoised)
        return output

    scheduler.step = recording_step
    if isinstance(scheduler, GITSFlowMatchScheduler):
        # Calibration's own schedulers take Flux's default sigmas as "N steps" on purpose: warning users about that
        # is for their schedulers, not for the hundreds a calibration makes.
        scheduler._default_sigmas_warned = True
    pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        pipe.scheduler = original_scheduler
        pipe._progress_bar_config = original_bar
        del scheduler.step


#: Noise indices per seed: index `i` of seed `s` is generator seed `s * NOISE_STREAM + i`, so (seed, index) pairs
#: never share a noise. Calibration uses indices from 0, `compare` from `compare.FRESH_NOISES_START` = 2^31.
NOISE_STREAM = 2**32


def noise_seed(seed: int, index: int) -> int:
    """The generator seed of noise `index` of the stream `seed`: distinct for every (seed, index) pair."""
    if not 0 <= seed < 2**31 or not 0 <= index < NOISE_STREAM:
        raise ValueError(f"seed must be in [0, 2^31) and the noise index in [0, 2^32), got seed={seed}, index={index}")
    return seed * NOISE_STREAM + index


def _is_embedding(name: str, value: Any) -> bool:
    """Whether a call argument is one embedded condition (batch 1): `prompt_embeds`, `pooled_prompt_embeds`,
    `image_embeds`, their negatives and attention masks."""
    batch_one = isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == 1
    return batch_one and name.endswith(("_embeds", "_mask"))


class PipelineRunner:
    """Runs a pipeline on fixed per-sample seeds and prompts with a given scheduler; returns recorded trajectories.

    Sample `i` always gets the noise of `torch.Generator().manual_seed(noise_seed(seed, i))` and prompt
    `prompts[i % len(prompts)]`, whatever the batch it runs in, so teacher and student runs see the same noises.
    """

    def __init__(self, pipe, prompts: Sequence[str] | None, seed: int, batch_size: int, pipe_kwargs: dict[str, Any]):
        self.pipe = pipe
        self.prompts = list(prompts) if prompts else None
        self.seed = seed
        self.batch_size = batch_size
        self.pipe_kwargs = pipe_kwargs
        self.parameters = inspect.signature(pipe.__call__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in self.parameters.values())
        unknown = sorted(k for k in pipe_kwargs if k not in self.parameters)
        if unknown and not takes_any:
            # Checked before any model call: a misspelt option (`budgte=4`) would otherwise fail deep inside a run.
            raise TypeError(
                f"{unknown} is neither an option of this call nor an argument of {type(pipe).__name__}.__call__ "
                f"(a misspelling?); the pipeline takes {sorted(k for k in self.parameters if k != 'self')}"
            )
        if self.prompts and (
            "prompt" not in self.parameters or any(_is_embedding(k, v) for k, v in pipe_kwargs.items())
        ):
            # Checked before any model call: the prompts would be dropped, and the calibration made for other inputs.
            why = "takes no prompt" if "prompt" not in self.parameters else "is given embeddings instead"
            raise ValueError(f"prompts were given, but {type(pipe).__name__} {why}: leave prompts out")
        self.device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", torch.device("cpu"))

    def _call_kwargs(self, indices: Sequence[int], num_steps: int) -> dict[str, Any]:
        kwargs = dict(self.pipe_kwargs)
        kwargs["num_inference_steps"] = num_steps
        generator_device = "cpu" if torch.device(self.device).type == "mps" else self.device
        kwargs["generator"] = [
            torch.Generator(generator_device).manual_seed(noise_seed(self.seed, i)) for i in indices
        ]
        embedded = {name for name, value in kwargs.items() if _is_embedding(name, value)}
        per_prompt = next((name for name in PER_PROMPT_COUNTS if name in self.parameters), None)
        if embedded:
            # One embedded condition (checked), a batch of noises: the embeddings are repeated to the batch, which
            # every pipeline reads from them (CogVideoX ignores num_videos_per_prompt; Kandinsky's image embeddings).
            kwargs.update(
                {name: kwargs[name].repeat(len(indices), *[1] * (kwargs[name].ndim - 1)) for name in embedded}
            )
        elif "prompt" in self.parameters:
            prompts = self.prompts or [""]
            kwargs["prompt"] = [prompts[i % len(prompts)] for i in indices]
        elif per_prompt:
            kwargs[per_prompt] = len(indices)
        elif "batch_size" in self.parameters:
            kwargs["batch_size"] = len(indices)
        if "output_type" in self.parameters:
            kwargs["output_type"] = "latent"
        return kwargs

    def run(
        self,
        scheduler: _GITSSchedulerBase,
        indices: Sequence[int],
        num_steps: int,
        keep_path: bool,
        inject: Sequence[torch.Tensor | None] | None = None,
    ) -> Trajectory:
        trajectory = Trajectory()
        with recording(self.pipe, scheduler, trajectory, keep_path, inject), torch.no_grad():
            self.pipe(**self._call_kwargs(indices, num_steps))
        if len(trajectory.states) != (num_steps + 1 if keep_path else 1):
            raise CalibrationError(
                f"the pipeline took {len(trajectory.states) - 1 if keep_path else '?'} steps instead of {num_steps}; "
                "calibration needs pipelines that run the scheduler's whole schedule"
            )
        if trajectory.states[-1].shape[0] != len(indices):
            raise CalibrationError(
                f"{type(self.pipe).__name__} made {trajectory.states[-1].shape[0]} samples where calibration asked for "
                f"{len(indices)} (one per warm-up noise): calibration sets a `prompt` per noise, repeats batch-1 "
                f"`*_embeds` / `*_mask` arguments to the batch, or sets {' / '.join(PER_PROMPT_COUNTS)} or "
                "`batch_size`, and this pipeline took its batch from none of them"
            )
        return trajectory

    def batches(self, indices: Sequence[int]) -> list[list[int]]:
        """`indices` cut into pipeline calls of `batch_size` (the same cut whatever the number of processes)."""
        return [list(indices[k : k + self.batch_size]) for k in range(0, len(indices), self.batch_size)]

    def final_state_jobs(
        self, name: str, scheduler: _GITSSchedulerBase, indices: Sequence[int], spend_as: str | None = None
    ) -> list[Job]:
        """Jobs that sample `indices` with `scheduler`'s only schedule, each returning its batch's final states;
        `name` must tell apart every schedule a calibration samples (it keys the checkpoint); `spend_as` as `Job`'s."""
        (num_steps,) = scheduler.calibrated_steps

        def final(batch: list[int]) -> torch.Tensor:
            return self.run(scheduler, batch, num_steps, keep_path=False).states[-1]

        return [
            Job(
                f"{name}/{batch_key(batch)}",
                len(batch) * num_steps,
                len(batch),
                functools.partial(final, batch),
                spend_as,
            )
            for batch in self.batches(indices)
        ]


def batch_key(batch: Sequence[int]) -> str:
    """Names a batch of noise indices in job keys."""
    return f"noises {batch[0]}-{batch[-1]} ({len(batch)})"


def check_pipeline_family(pipe) -> dict:
    """The pipeline's scheduler config, checked to be of a family GITS supports (VP or FlowMatchEuler-style flow)."""
    config = getattr(getattr(pipe, "scheduler", None), "config", None)
    if config is None:
        raise TypeError(f"expected a diffusers pipeline with a `scheduler`, got {type(pipe).__name__}")
    config = dict(config)
    flow = is_flow_scheduler_config(config)
    # Errors name the scheduler class the user has (a live scheduler's config does not carry `_class_name`).
    named = {**config, "_class_name": type(pipe.scheduler).__name__}
    (GITSFlowMatchScheduler if flow else GITSScheduler)._check_config_family(named)
    unreproduced = GITSFlowMatchScheduler.unreproduced_options(config) if flow else []
    if unreproduced:
        logger.warning(
            "the pipeline's %s sets %s; the baselines and the default schedule this calibration compares with are "
            "the plain shifted ones, without them",
            type(pipe.scheduler).__name__,
            unreproduced,
        )
    return flow_match_config(config) if flow else config


class _ShiftProbed(Exception):
    """Raised by the probe scheduler to stop the pipeline before its first model call."""


def probe_shift(runner: "PipelineRunner", base_config: dict, num_steps: int = 1) -> tuple[float | None, bool]:
    """The `mu` a flow pipeline passes to `set_timesteps` at this call's resolution (`None` unless the config shifts
    dynamically), and whether it passes sigmas.

    Flux computes `mu` from the latent size inside `__call__`; the pipeline is run up to `set_timesteps` (prompt
    encoding and latent preparation only, no denoiser call) to read it.
    """
    probe = GITSFlowMatchScheduler.from_config(base_config)
    seen = {}

    @functools.wraps(probe.set_timesteps)  # pipelines inspect its signature for `sigmas`
    def set_timesteps(*args, **kwargs):
        seen.update(kwargs)
        raise _ShiftProbed

    probe.set_timesteps = set_timesteps
    original = runner.pipe.scheduler
    runner.pipe.scheduler = probe
    try:
        with torch.no_grad():
            runner.pipe(**runner._call_kwargs([0], num_steps))
    except _ShiftProbed:
        pass
    finally:
        runner.pipe.scheduler = original
    mu = seen.get("mu")
    if not base_config.get("use_dynamic_shifting"):
        # A static shift ignores the `mu` some pipelines pass anyway (HiDream computes one for any scheduler but UniPC).
        return None, seen.get("sigmas") is not None
    if mu is None:
        raise CalibrationError(f"{type(runner.pipe).__name__} did not pass `mu`, which dynamic shifting needs")
    return float(mu), seen.get("sigmas") is not None


def probe_family(
    runner: "PipelineRunner", base_config: dict, steps: Sequence[int] = ()
) -> tuple[ModelFamily, float | None]:
    """The model family of a pipeline's (checked) scheduler config at the shift its calls sample with, and that
    `mu` (`None` for VP models and static shifts).

    `mu` is read at the largest of `steps` (1 without any); where the pipeline passes another `mu` at another of them
    (Flux.2 makes it depend on the step count), the family keeps each one (`flow_family`'s `mu_per_step`).
    """
    if not is_flow_scheduler_config(base_config):
        return model_family(base_config), None
    steps = sorted(set(steps)) or [1]
    probed = {k: probe_shift(runner, base_config, k) for k in steps}
    mu, passes_sigmas = probed[steps[-1]]
    mus = {k: found for k, (found, _) in probed.items()}
    varies = mu is not None and any(abs(other - mu) > 1e-9 for other in mus.values())
    return model_family(base_config, mu, passes_sigmas, mus if varies else None), mu


def open_pipeline(
    pipe,
    prompts: Sequence[str] | None,
    seed: int,
    batch_size: int,
    pipe_kwargs: dict[str, Any],
    steps: Sequence[int] = (),
) -> tuple["PipelineRunner", ModelFamily, float | None]:
    """The one preamble of calibrate, compare, analyze and the demo: the pipeline's scheduler checked
    (`check_pipeline_family`), a runner on its seeded noises and prompts, and its family at the shift its calls
    sample with (`probe_family`, at `steps`) and that `mu`. No denoiser call."""
    base_config = check_pipeline_family(pipe)
    runner = PipelineRunner(pipe, prompts, seed, batch_size, pipe_kwargs)
    family, mu = probe_family(runner, base_config, steps)
    return runner, family, mu
