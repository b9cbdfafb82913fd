"""Calibration: run a diffusers pipeline to record teacher trajectories, search GITS schedules, pick and refine them.

Data flows one way: the pipeline runs with a recording GITS scheduler of its family (VP or flow matching) over the
fine grid (the teacher), the trajectories feed `JumpCostAccumulator` batch by batch (memory does not grow with the
warm-up count), the dynamic program turns costs into candidate schedules, and held-out warm-up noises, sampled
through the same pipeline with the target solver, choose among them (and optionally refine the winner).
"""

import functools
import inspect
import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .errors import CalibrationError, ScheduleLoadError
from .evaluation import per_sample_rmse
from .families import ModelFamily, model_family
from .hub import cache_load, cache_store, calibration_key, fetch_schedule_config
from .noise import is_flow_scheduler_config
from .schedules import check_step_count
from .scheduling_gits import (
    GITSFlowMatchScheduler,
    GITSScheduler,
    _GITSSchedulerBase,
    scheduler_from_config,
)
from .search import METRICS, JumpCostAccumulator, SolverJumpCostAccumulator, dp_schedules
from .solvers import SOLVERS


logger = logging.getLogger(__name__)

TEACHERS = ("dpmpp_2m", "ipndm")
JUMP_COSTS = ("euler", "solver")
#: coeff values swept by `coeff="auto"`: the authors' range (ComfyUI ships 0.80-1.50) on both sides of 1.
AUTO_COEFFS = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)
#: Keys of the pipeline call that calibration sets itself.
RESERVED_KWARGS = (
    "prompt",
    "num_inference_steps",
    "generator",
    "batch_size",
    "num_images_per_prompt",
    "output_type",
    "sigmas",
    "timesteps",
)


@dataclass
class Trajectory:
    """What one teacher or student run of the pipeline leaves behind (solver coordinates, on CPU)."""

    states: list[torch.Tensor] = field(default_factory=list)
    denoised: list[torch.Tensor] = field(default_factory=list)


@contextmanager
def recording(pipe, scheduler: _GITSSchedulerBase, trajectory: Trajectory, keep_path: bool):
    """Install `scheduler` on `pipe` with its `step` wrapped to record every state; restore the pipe afterwards.

    With `keep_path=False` only the final state is kept (student runs). The pipeline's own progress bar is silenced.
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
        return output

    scheduler.step = recording_step
    pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        pipe.scheduler = original_scheduler
        pipe._progress_bar_config = original_bar
        del scheduler.step


class PipelineRunner:
    """Runs a pipeline on fixed per-sample seeds and prompts with a given scheduler; returns recorded trajectories.

    Sample `i` always gets the noise of `torch.Generator().manual_seed(seed * 1_000_003 + i)` and prompt
    `prompts[i % len(prompts)]`, whatever the batch it runs in, so teacher and student runs see the same noises.
    """

    def __init__(self, pipe, prompts: Sequence[str] | None, seed: int, batch_size: int, pipe_kwargs: dict[str, Any]):
        self.pipe = pipe
        self.prompts = list(prompts) if prompts else None
        self.seed = seed
        self.batch_size = batch_size
        self.pipe_kwargs = pipe_kwargs
        self.parameters = inspect.signature(pipe.__call__).parameters
        self.device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", torch.device("cpu"))

    def _call_kwargs(self, indices: Sequence[int], num_steps: int) -> dict[str, Any]:
        kwargs = dict(self.pipe_kwargs)
        kwargs["num_inference_steps"] = num_steps
        generator_device = "cpu" if torch.device(self.device).type == "mps" else self.device
        kwargs["generator"] = [
            torch.Generator(generator_device).manual_seed(self.seed * 1_000_003 + i) for i in indices
        ]
        if "prompt_embeds" in kwargs and "num_images_per_prompt" in self.parameters:
            kwargs["num_images_per_prompt"] = len(indices)  # one embedded prompt (checked), a batch of noises
        elif "prompt" in self.parameters:
            prompts = self.prompts or [""]
            kwargs["prompt"] = [prompts[i % len(prompts)] for i in indices]
        elif "batch_size" in self.parameters:
            kwargs["batch_size"] = len(indices)
        if "output_type" in self.parameters:
            kwargs["output_type"] = "latent"
        return kwargs

    def run(
        self, scheduler: _GITSSchedulerBase, indices: Sequence[int], num_steps: int, keep_path: bool
    ) -> Trajectory:
        trajectory = Trajectory()
        with recording(self.pipe, scheduler, trajectory, keep_path), torch.no_grad():
            self.pipe(**self._call_kwargs(indices, num_steps))
        if len(trajectory.states) != (num_steps + 1 if keep_path else 1):
            raise CalibrationError(
                f"the pipeline took {len(trajectory.states) - 1 if keep_path else '?'} steps instead of {num_steps}; "
                "calibration needs pipelines that run the scheduler's whole schedule"
            )
        return trajectory

    def final_states(self, scheduler: _GITSSchedulerBase, indices: Sequence[int], num_steps: int) -> torch.Tensor:
        """Final samples for `indices`, run in batches of `batch_size`."""
        chunks = [indices[k : k + self.batch_size] for k in range(0, len(indices), self.batch_size)]
        return torch.cat([self.run(scheduler, chunk, num_steps, keep_path=False).states[-1] for chunk in chunks])


def _check_pipeline(pipe) -> dict:
    """The pipeline's scheduler config, checked to be of a family GITS supports (VP or FlowMatchEuler-style flow)."""
    config = getattr(getattr(pipe, "scheduler", None), "config", None)
    if config is None:
        raise TypeError(f"expected a diffusers pipeline with a `scheduler`, got {type(pipe).__name__}")
    config = dict(config)
    flow = is_flow_scheduler_config(config)
    (GITSFlowMatchScheduler if flow else GITSScheduler)._check_config_family(config)
    unreproduced = GITSFlowMatchScheduler.unreproduced_options(config) if flow else []
    if unreproduced:
        logger.warning(
            "the pipeline's FlowMatchEulerDiscreteScheduler sets %s; the baselines and the default schedule this "
            "calibration compares with are the plain shifted ones, without them",
            unreproduced,
        )
    return config


class _ShiftProbed(Exception):
    """Raised by the probe scheduler to stop the pipeline before its first model call."""


def _probe_shift(runner: "PipelineRunner", base_config: dict) -> tuple[float | None, bool]:
    """The `mu` a flow pipeline passes to `set_timesteps` at this call's resolution, and whether it passes sigmas.

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
            runner.pipe(**runner._call_kwargs([0], 1))
    except _ShiftProbed:
        pass
    finally:
        runner.pipe.scheduler = original
    mu = seen.get("mu")
    if base_config.get("use_dynamic_shifting") and mu is None:
        raise CalibrationError(f"{type(runner.pipe).__name__} did not pass `mu`, which dynamic shifting needs")
    return (float(mu) if mu is not None else None), seen.get("sigmas") is not None


def _check_steps(num_inference_steps: int | Sequence[int], grid_size: int) -> list[int]:
    steps = [num_inference_steps] if isinstance(num_inference_steps, (int, np.integer)) else list(num_inference_steps)
    if not steps:
        raise ValueError("num_inference_steps is empty; pass step counts such as [5, 6, 8, 10]")
    for k in steps:
        check_step_count(k, "each of num_inference_steps")
        if k > grid_size:
            raise ValueError(
                f"num_inference_steps {k} is larger than the grid allows (grid_size={grid_size}); raise grid_size"
            )
    return sorted({int(k) for k in steps})


def calibrate(
    pipe,
    num_inference_steps: int | Sequence[int],
    prompts: Sequence[str] | None = None,
    num_warmup: int = 256,
    batch_size: int = 16,
    solver: str = "dpmpp_2m",
    teacher: str = "dpmpp_2m",
    grid_size: int = 61,
    metric: str = "l2",
    jump_cost: str = "euler",
    coeff: float | str = "auto",
    num_holdout: int | None = None,
    refine: bool = True,
    seed: int = 0,
    progress: bool = True,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    hub_repo: str | None = None,
    push: bool = False,
    **pipe_kwargs,
) -> GITSScheduler | GITSFlowMatchScheduler:
    """Calibrate GITS schedules for `pipe` by running it, and return a GITS scheduler that samples with them.

    Args:
        pipe: a diffusers pipeline whose scheduler is VP / DDPM-style (SD 1.x/2.x, SDXL, PixArt, DDPMPipeline, ...)
            or FlowMatchEuler-style flow matching (SD3, Flux). Flow models are calibrated at the resolution of
            `pipe_kwargs` (`height` / `width`): the `mu` the pipeline passes there is recorded with the schedules.
        num_inference_steps: one step count or several; one calibration serves them all.
        prompts: prompts cycled over the warm-up samples; `None` for unconditional pipelines (or the empty prompt).
        num_warmup (`int`, defaults to 256): warm-up samples run by the teacher, held-out ones included.
        batch_size (`int`, defaults to 16): samples per pipeline call.
        solver (`str`, defaults to `"dpmpp_2m"`): the solver the schedules are for (`euler`, `ipndm`, `dpmpp_2m`, `unipc`).
        teacher (`str`, defaults to `"dpmpp_2m"`): the teacher solver on the fine grid (`dpmpp_2m` or `ipndm`).
        grid_size (`int`, defaults to 61): fine-grid points (plus the final sigma = 0): uniform in timestep for VP
            models, uniform in sigma before the model's shift for flow models (`diffusers_gits.families`).
        metric (`str`, defaults to `"l2"`): jump cost, `l2`, `l1` or `dev` (the authors' deviation from the chord).
        jump_cost (`str`, defaults to `"euler"`): how a jump is priced: `"euler"` (the paper: one Euler step from the
            teacher state) or `"solver"` (the target solver's own step, with the teacher's previous point as its
            history; `l2` only). See `diffusers_gits.search.SolverJumpCostAccumulator`.
        coeff (`float` or `"auto"`, defaults to `"auto"`): the DP's per-jump weight factor; `"auto"` sweeps
            `AUTO_COEFFS` and keeps, per step count, the schedule closest to the teacher on held-out noises.
        num_holdout (`int`, *optional*): warm-up samples held out of the cost for choosing among schedules; defaults
            to a quarter of `num_warmup` (at least 1 when there is a choice to make).
        refine (`bool`, defaults to `True`): after choosing, move each schedule point while that lowers the held-out
            error on both halves of the held-out set.
        seed (`int`, defaults to 0): seeds the per-sample noises.
        progress (`bool`, defaults to `True`): show tqdm progress bars.
        cache (`bool`, defaults to `True`): look the result up in, and store it to, the local cache, keyed by
            everything that changes it (every component's class, config and tensors, the pipeline class, the noise
            schedule, prompts, every option above but `batch_size` and `progress`, pipeline kwargs, package version;
            `diffusers_gits.hub.calibration_key`). A hit makes no model call and logs a warning naming what it was
            made on.
        cache_dir (`str` or `Path`, *optional*): the cache folder; defaults to `$DIFFUSERS_GITS_CACHE` or
            `$HF_HOME/diffusers_gits`.
        hub_repo (`str`, *optional*): a Hub model repo to look in first (subfolder = the cache key).
        push (`bool`, defaults to `False`): with `hub_repo`, publish the result there after calibrating.
        **pipe_kwargs: passed to every pipeline call (`guidance_scale`, `height`, `width`, `negative_prompt`, ...).

    Returns:
        A [`GITSScheduler`] (VP) or [`GITSFlowMatchScheduler`] (flow matching) with `gits_sigmas` for every requested
        step count and the calibration metadata and report in its config.
    """
    base_config = _check_pipeline(pipe)
    steps = _check_steps(num_inference_steps, grid_size)
    choosing = coeff == "auto" or refine
    num_holdout = _check_options(
        solver, teacher, metric, jump_cost, coeff, batch_size, num_warmup, num_holdout, choosing, pipe_kwargs
    )

    if push and not hub_repo:
        raise ValueError("push=True needs hub_repo= (the Hub model repo to publish to)")
    runner = PipelineRunner(pipe, prompts, seed, batch_size, pipe_kwargs)
    # A flow pipeline's shift depends on the resolution it computes inside __call__: read it (no denoiser call) first,
    # so that it keys the cache too.
    mu, passes_sigmas = _probe_shift(runner, base_config) if is_flow_scheduler_config(base_config) else (None, False)
    family = model_family(base_config, mu, passes_sigmas)
    key = None
    if cache or hub_repo:
        settings = {
            "steps": steps, "prompts": list(prompts or []), "num_warmup": num_warmup, "solver": solver,
            "teacher": teacher, "grid_size": grid_size, "metric": metric, "jump_cost": jump_cost, "coeff": coeff,
            "num_holdout": num_holdout, "refine": refine, "seed": seed, "pipe_kwargs": pipe_kwargs, "mu": mu,
        }  # fmt: skip
        key = calibration_key(pipe, settings)
        found = _lookup(key, cache, cache_dir, hub_repo)
        if found is not None:
            return found

    scheduler = _search(
        runner, family, steps, num_warmup, solver, teacher, grid_size, metric, jump_cost, coeff, num_holdout,
        choosing, refine, seed, progress, pipe_kwargs,
    )  # fmt: skip
    if cache:
        cache_store(key, scheduler, Path(cache_dir) if cache_dir else None)
    if push:
        scheduler.push_to_hub(hub_repo, subfolder=key)
    return scheduler


def _lookup(key: str, cache: bool, cache_dir: str | Path | None, hub_repo: str | None) -> _GITSSchedulerBase | None:
    """A previous result for `key` from the local cache, then the Hub; `None` when neither has one."""
    if cache:
        found = cache_load(key, Path(cache_dir) if cache_dir else None)
        if found is not None:
            meta = found.config.calibration or {}
            logger.warning(
                "Using the cached GITS calibration %s (made on model %s, pipeline %s, at %s); pass cache=False to "
                "calibrate again",
                key,
                meta.get("model"),
                meta.get("pipeline_class"),
                meta.get("created", "an unknown date"),
            )
            return found
    if hub_repo:
        try:
            found = scheduler_from_config(fetch_schedule_config(hub_repo, subfolder=key))
        except ScheduleLoadError as error:
            logger.warning("No usable GITS schedule for this setting in %s (%s); calibrating.", hub_repo, error)
            return None
        if cache:
            cache_store(key, found, Path(cache_dir) if cache_dir else None)
        logger.info("GITS calibration found on the Hub: %s, subfolder %s", hub_repo, key)
        return found
    return None


def _search(
    runner, family, steps, num_warmup, solver, teacher, grid_size, metric, jump_cost, coeff, num_holdout, choosing,
    refine, seed, progress, pipe_kwargs,
) -> _GITSSchedulerBase:  # fmt: skip
    """Teacher, cost, DP, held-out choice: the calibration proper (arguments as in `calibrate`)."""
    timings = {"teacher_s": 0.0, "cost_s": 0.0, "dp_s": 0.0, "selection_s": 0.0}
    pipe, prompts = runner.pipe, runner.prompts
    grid = family.grid(grid_size)
    teacher_scheduler = family.scheduler(teacher, {grid_size: grid})
    accumulator = (
        JumpCostAccumulator(grid, metric)
        if jump_cost == "euler"
        else SolverJumpCostAccumulator(grid, solver, family.scheduler_class.path)
    )
    fine_steps = 2 * grid_size - 1
    reference_scheduler = family.scheduler(teacher, {fine_steps: family.grid(fine_steps)})
    teacher_finals = _record_teacher(
        runner, teacher_scheduler, reference_scheduler, accumulator, num_warmup, num_holdout, progress, timings
    )

    tic = time.perf_counter()
    cost = accumulator.mean()
    coeffs = AUTO_COEFFS if coeff == "auto" else (float(coeff),)
    dp = {c: dp_schedules(cost, steps, c) for c in coeffs}
    timings["dp_s"] = time.perf_counter() - tic

    tic = time.perf_counter()
    holdout = list(range(num_warmup - num_holdout, num_warmup))
    selector = _HoldoutSelector(runner, family, solver, holdout, teacher_finals)
    schedules, report = {}, {}
    for k in tqdm(steps, desc="GITS schedule choice", unit="N", disable=not progress or not num_holdout):
        candidates = {f"gits_coeff_{c:g}": grid[dp[c][k]] for c in coeffs}
        default = family.default(k)
        if choosing:
            # The full-range baselines compete too, so the result is never worse on held-out data than they are. The
            # pipeline's own default is scored for the report only: "leading" spacing starts below sigma_max, where
            # a blurry, mean-like sample can look close to the teacher in RMSE while being a poor sample.
            candidates.update(family.baselines(k))
        schedules[k], report[str(k)] = _choose(candidates, default, selector, refine and k > 1, grid_size)
    timings["selection_s"] = time.perf_counter() - tic

    for k in steps:
        entry = report[str(k)]
        if "gits_error" in entry:
            logger.info(
                "GITS %d steps: held-out RMSE to teacher %.4g (default schedule %.4g), chose %s",
                k,
                entry["gits_error"],
                entry["default_error"],
                entry["chosen"],
            )
    metadata = {
        "format_version": 1,
        "package_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": _model_name(pipe),
        "pipeline_class": type(pipe).__name__,
        "pipe_kwargs": {k: v for k, v in pipe_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))},
        "num_prompts": len(prompts) if prompts else 0,
        "solver": solver,
        "teacher": teacher,
        "family": family.metadata["family"],
        "mu": family.metadata.get("mu"),
        "grid": {"type": family.metadata["grid_type"], "size": grid_size},
        "metric": metric,
        "jump_cost": jump_cost,
        "coeff": coeff if coeff == "auto" else float(coeff),
        "chosen_coeff": {k: entry["coeff"] for k, entry in report.items()},
        "num_warmup": num_warmup,
        "num_holdout": num_holdout,
        "refine": refine,
        "seed": seed,
        "model_calls": {
            "teacher": (num_warmup - num_holdout) * grid_size + num_holdout * (2 * grid_size - 1),
            "selection": selector.model_calls,
        },
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
        "report": report,
    }
    return family.scheduler(solver, schedules, metadata)


def _check_options(
    solver, teacher, metric, jump_cost, coeff, batch_size, num_warmup, num_holdout, choosing, pipe_kwargs
) -> int:
    """Validate the calibration options before any model call; return the held-out count to use."""
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r} is not supported; choose one of {sorted(SOLVERS)}")
    if teacher not in TEACHERS:
        raise ValueError(f"teacher {teacher!r} is not supported; choose one of {TEACHERS}")
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not supported; choose one of {METRICS}")
    if jump_cost not in JUMP_COSTS:
        raise ValueError(f"jump_cost {jump_cost!r} is not supported; choose one of {JUMP_COSTS}")
    if jump_cost == "solver" and metric != "l2":
        raise ValueError(f"jump_cost='solver' supports metric='l2' only, got metric={metric!r}")
    if coeff != "auto" and (isinstance(coeff, str) or not coeff > 0):
        raise ValueError(f"coeff must be a positive number or 'auto', got {coeff!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_warmup < batch_size:
        raise ValueError(f"num_warmup ({num_warmup}) must be at least batch_size ({batch_size})")
    if num_holdout is None:
        num_holdout = max(2, num_warmup // 4) if choosing else 0
    lowest = 2 if choosing else 0
    if not lowest <= num_holdout < num_warmup:
        raise ValueError(
            f"num_holdout must be in {lowest}..{num_warmup - 1}"
            + (" when coeff='auto' or refine=True" if choosing else "")
            + f", got {num_holdout}"
        )
    reserved = sorted(set(pipe_kwargs) & set(RESERVED_KWARGS))
    if reserved:
        raise ValueError(f"calibration sets {reserved} itself; pass prompts=, num_inference_steps= and seed= instead")
    embeds = pipe_kwargs.get("prompt_embeds")
    if embeds is not None and len(embeds) != 1:
        raise ValueError(
            f"prompt_embeds must hold one prompt (batch 1; the warm-up noises are its images), got batch {len(embeds)}"
        )
    return num_holdout


def _record_teacher(
    runner, teacher_scheduler, reference_scheduler, accumulator, num_warmup, num_holdout, progress, timings
):
    """Run the teacher over the warm-up samples batch by batch into the cost; solve the held-out ones finely.

    The held-out samples (the last `num_holdout`) are what schedules are scored against, so they are solved with the
    teacher solver on a grid twice as fine: the teacher's own error would otherwise bias the choice at higher NFE.
    Returns their final samples, or `None` when there are none.
    """
    holdout_start = num_warmup - num_holdout
    grid_size = len(accumulator.grid_sigmas) - 1
    bar = tqdm(total=num_warmup, desc="GITS teacher", unit="sample", disable=not progress)
    for start in range(0, holdout_start, runner.batch_size):
        indices = list(range(start, min(start + runner.batch_size, holdout_start)))
        tic = time.perf_counter()
        trajectory = runner.run(teacher_scheduler, indices, grid_size, keep_path=True)
        toc = time.perf_counter()
        accumulator.update(torch.stack(trajectory.states), torch.stack(trajectory.denoised))
        timings["teacher_s"] += toc - tic
        timings["cost_s"] += time.perf_counter() - toc
        bar.update(len(indices))
    finals = None
    if num_holdout:
        tic = time.perf_counter()
        finals = runner.final_states(
            reference_scheduler, list(range(holdout_start, num_warmup)), reference_scheduler.calibrated_steps[0]
        )
        timings["teacher_s"] += time.perf_counter() - tic
        bar.update(num_holdout)
    bar.close()
    return finals


def _choose(candidates, default, selector, refine, grid_size) -> tuple[np.ndarray, dict]:
    """Pick the candidate closest to the teacher on held-out noises (and refine it); the only one without them."""
    if selector.teacher_finals is None:
        ((name, sigmas),) = candidates.items()
        return sigmas, {"chosen": name, "coeff": _coeff_of(name)}
    errors = {name: selector.error(sigmas) for name, sigmas in candidates.items()}
    errors["default"] = selector.error(default)
    name = min(candidates, key=errors.get)
    sigmas, error = candidates[name], errors[name]
    if refine:
        sigmas, error = selector.refine(sigmas, grid_size)
    entry = {
        "chosen": name + ("+refined" if error < errors[name] else ""),
        "coeff": _coeff_of(name),
        "gits_error": error,
        "default_error": errors["default"],
        "candidate_errors": errors,
        "chosen_sigmas_before_refine": [float(s) for s in candidates[name]],
    }
    return sigmas, entry


def _coeff_of(name: str) -> float | None:
    return float(name.removeprefix("gits_coeff_")) if name.startswith("gits_coeff_") else None


def _model_name(pipe) -> str | None:
    config = getattr(pipe, "config", None) or {}
    name = getattr(pipe, "name_or_path", None) or config.get("_name_or_path")
    return str(name) if name is not None else None


class _HoldoutSelector:
    """Scores schedules by the held-out RMSE of the target solver's final samples to the teacher's."""

    def __init__(
        self,
        runner: PipelineRunner,
        family: ModelFamily,
        solver: str,
        holdout: list[int],
        teacher_finals: torch.Tensor | None,
    ):
        self.runner = runner
        self.family = family
        self.solver = solver
        self.holdout = holdout
        self.teacher_finals = teacher_finals
        self.model_calls = 0
        self._cache: dict[tuple, torch.Tensor] = {}

    def per_sample_errors(self, sigmas: np.ndarray) -> torch.Tensor:
        key = tuple(np.round(np.asarray(sigmas, dtype=np.float64), 10))
        if key not in self._cache:
            k = len(sigmas) - 1
            scheduler = self.family.scheduler(self.solver, {k: sigmas})
            finals = self.runner.final_states(scheduler, self.holdout, k)
            self.model_calls += k * len(self.holdout)
            self._cache[key] = per_sample_rmse(finals, self.teacher_finals)
        return self._cache[key]

    def error(self, sigmas: np.ndarray) -> float:
        return float(self.per_sample_errors(sigmas).mean())

    def refine(self, sigmas: np.ndarray, grid_size: int, rounds: int = 4, sweeps: int = 2) -> tuple[np.ndarray, float]:
        """Coordinate descent on the interior points in the grid's coordinate, by 2, 1, 1/2 and 1/4 grid spacings.

        Each sweep tries moving every point both ways and keeps the better move if it lowers the mean error on each
        half of the held-out set, which guards against fitting the noise of a small held-out set. A round repeats its
        sweep (up to `sweeps` times) while some point moved.
        """
        best = np.asarray(sigmas, dtype=np.float64).copy()
        best_errors = self.per_sample_errors(best)
        half = len(self.holdout) // 2
        t = self.family.to_coordinate(best[:-1])
        grid_spacing = self.family.spacing(grid_size)
        for r in range(rounds):
            delta = 2 * grid_spacing / 2**r
            for _ in range(sweeps):
                moved = False
                for i in range(1, len(t)):
                    trials = []
                    for direction in (-1.0, 1.0):
                        trial_t = t.copy()
                        trial_t[i] += direction * delta
                        # Keep half a move from the neighbours: landing on one would make a zero-length step.
                        lower = trial_t[i + 1] + delta / 2 if i + 1 < len(trial_t) else self.family.lowest
                        if lower < trial_t[i] < trial_t[i - 1] - delta / 2:
                            trial = np.append(self.family.from_coordinate(trial_t), 0.0)
                            trials.append((trial_t, trial, self.per_sample_errors(trial)))
                    improving = [
                        trial for trial in trials
                        if (best_errors - trial[2])[:half].mean() > 0 and (best_errors - trial[2])[half:].mean() > 0
                    ]  # fmt: skip
                    if improving:
                        t, best, best_errors = min(improving, key=lambda trial: float(trial[2].mean()))
                        moved = True
                if not moved:
                    break
        return best, float(best_errors.mean())
