"""Calibration: run a diffusers pipeline to record teacher trajectories, search GITS schedules, pick and refine them.

Data flows one way: the pipeline runs with a recording GITS scheduler of its family (VP or flow matching) over the
fine grid (the teacher), the trajectories feed `JumpCostAccumulator` batch by batch (memory does not grow with the
warm-up count), the dynamic program turns costs into candidate schedules, and held-out warm-up noises, sampled
through the same pipeline with the target solver, choose among them (and optionally refine the winner).
"""

import functools
import inspect
import logging
import math
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
from .families import model_family
from .hub import cache_load, cache_store, calibration_key, fetch_schedule_config
from .noise import is_flow_scheduler_config
from .schedules import check_step_count
from .scheduling_gits import (
    GITSFlowMatchScheduler,
    GITSScheduler,
    _GITSSchedulerBase,
    scheduler_from_config,
)
from .search import METRICS, JumpCostAccumulator, SolverJumpCostAccumulator, dp_schedules, student_path_dp
from .selection import PairedRace
from .solvers import SOLVERS


logger = logging.getLogger(__name__)

TEACHERS = ("dpmpp_2m", "ipndm")
JUMP_COSTS = ("student", "euler", "solver")
#: coeff values swept by `coeff="auto"`: the authors' range (ComfyUI ships 0.80-1.50) on both sides of 1.
AUTO_COEFFS = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)
#: Held-out noises added to the race per round (nothing is eliminated before two rounds).
RACE_ROUND = 16
#: Baselines the student search's race keeps after screening them on the search noises.
SCREENED_BASELINES = 2
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
        return trajectory

    def final_states(self, scheduler: _GITSSchedulerBase, indices: Sequence[int], num_steps: int) -> torch.Tensor:
        """Final samples for `indices`, run in batches of `batch_size`."""
        chunks = [indices[k : k + self.batch_size] for k in range(0, len(indices), self.batch_size)]
        return torch.cat([self.run(scheduler, chunk, num_steps, keep_path=False).states[-1] for chunk in chunks])


def check_pipeline_family(pipe) -> dict:
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


def probe_shift(runner: "PipelineRunner", base_config: dict) -> tuple[float | None, bool]:
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
    teacher: str = "ipndm",
    grid_size: int = 61,
    jump_cost: str = "student",
    num_search: int | None = None,
    budget: float = 2.0,
    confidence: float = 0.95,
    require_confidence: bool = False,
    metric: str = "l2",
    coeff: float | str | None = None,
    refine: bool = False,
    num_holdout: int | None = None,
    seed: int = 0,
    progress: bool = True,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    hub_repo: str | None = None,
    push: bool = False,
    **pipe_kwargs,
) -> GITSScheduler | GITSFlowMatchScheduler:
    """Calibrate GITS schedules for `pipe` by running it, and return a GITS scheduler that samples with them.

    The default search runs the target solver along the student's own states (`jump_cost="student"`,
    `diffusers_gits.search.student_path_dp`) on `num_search` warm-up noises, then races its schedule against the
    baseline schedules people use today on held-out warm-up noises, adding noises only while the ranking is unclear
    (`diffusers_gits.selection.PairedRace`). The leader is returned: the searched schedule where it leads (the
    report says whether every baseline was beaten with `confidence`), else the baseline that leads, and the report
    says that nothing better was found (`require_confidence=True` keeps a searched schedule only where it is
    confirmed). Every stage stays within `budget`.

    Args:
        pipe: a diffusers pipeline whose scheduler is VP / DDPM-style (SD 1.x/2.x, SDXL, PixArt, DDPMPipeline, ...)
            or FlowMatchEuler-style flow matching (SD3, Flux). Flow models are calibrated at the resolution of
            `pipe_kwargs` (`height` / `width`): the `mu` the pipeline passes there is recorded with the schedules.
        num_inference_steps: one step count or several; one calibration serves them all.
        prompts: prompts cycled over the warm-up samples; `None` for unconditional pipelines (or the empty prompt).
        num_warmup (`int`, defaults to 256): warm-up noises in all: the first `num_search` for the search, the rest
            held out for the choice (used only as far as the race needs them).
        batch_size (`int`, defaults to 16): samples per pipeline call, and held-out noises added per race round.
        solver (`str`, defaults to `"dpmpp_2m"`): the solver the schedules are for (`euler`, `ipndm`, `dpmpp_2m`, `unipc`).
        teacher (`str`, defaults to `"ipndm"`): the teacher solver (`ipndm` or `dpmpp_2m`). It gives the search its
            targets and the held-out noises their references, on the search grid with every interval halved. iPNDM
            (fourth order) is as accurate there as DPM-Solver++(2M) on the embedded model and 50x more accurate on an
            exact Gaussian mixture; a reference less accurate than the schedules it judges would rank them by their
            likeness to its own error.
        grid_size (`int`, defaults to 61): fine-grid points (plus the final sigma = 0): uniform in timestep for VP
            models, uniform in sigma before the model's shift for flow models (`diffusers_gits.families`).
        jump_cost (`str`, defaults to `"student"`): how the DP prices a jump: `"student"` steps the target solver
            from the student's own states (model calls: about max(steps) x grid_size x num_search); `"euler"` (the
            paper) and `"solver"` price it from the teacher's states with one Euler step or the solver's own step
            (no model calls beyond the teacher; `diffusers_gits.search`).
        num_search (`int`, *optional*): warm-up noises the search runs on. For `"student"` it defaults to as many as
            half the budget pays for, at most 32 and half of `num_warmup` (24 at the defaults with steps up to 10);
            for the teacher-priced costs to `num_warmup - num_holdout`, or three quarters of `num_warmup`.
        budget (`float`, defaults to 2.0): the most model calls the calibration may make in all (teacher, search,
            race and refinement), as a multiple of `num_warmup * grid_size` (one GITS teacher run over the
            warm-ups). Refused before any model call when the search alone would exceed it.
        confidence (`float`, defaults to 0.95): the race drops a schedule once it is worse than the leader with this
            confidence; the report says whether the choice beat every baseline with it.
        require_confidence (`bool`, defaults to `False`): keep a searched schedule only where it beats every baseline
            with `confidence`, else return the best baseline. By default the race's leader is kept: at the default
            budget the held-out noises rarely confirm a 5-15% gain, and a leading searched schedule was the better
            bet on every cell measured (benchmarks/RESULTS.md).
        metric (`str`, defaults to `"l2"`): `jump_cost="euler"` only: `l2`, `l1` or `dev` (the authors' deviation).
        coeff (`float` or `"auto"`, *optional*): teacher-priced costs only: the DP's per-jump weight factor; `"auto"`
            (their default) puts the DP's schedules for every coeff in `AUTO_COEFFS` into the race.
        refine (`bool`, defaults to `False`): after the race, move each point of the chosen schedule while the
            held-out error falls on both halves of the race's noises, within the budget.
        num_holdout (`int`, *optional*): held-out warm-up noises available to the race; defaults to all warm-ups the
            search does not use (`num_warmup - num_search`). 0 returns the search's schedules unchecked.
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
    base_config = check_pipeline_family(pipe)
    steps = _check_steps(num_inference_steps, grid_size)
    options = _check_options(
        steps, solver, teacher, grid_size, jump_cost, num_search, budget, confidence, metric, coeff, refine,
        num_holdout, batch_size, num_warmup, pipe_kwargs,
    )  # fmt: skip
    options["require_confidence"] = bool(require_confidence)
    if push and not hub_repo:
        raise ValueError("push=True needs hub_repo= (the Hub model repo to publish to)")
    runner = PipelineRunner(pipe, prompts, seed, batch_size, pipe_kwargs)
    # A flow pipeline's shift depends on the resolution it computes inside __call__: read it (no denoiser call) first,
    # so that it keys the cache too.
    mu, passes_sigmas = probe_shift(runner, base_config) if is_flow_scheduler_config(base_config) else (None, False)
    family = model_family(base_config, mu, passes_sigmas)
    key = None
    if cache or hub_repo:
        settings = {
            "steps": steps, "prompts": list(prompts or []), "num_warmup": num_warmup, "solver": solver,
            "teacher": teacher, "grid_size": grid_size, **options, "seed": seed, "pipe_kwargs": pipe_kwargs, "mu": mu,
        }  # fmt: skip
        key = calibration_key(pipe, settings)
        found = _lookup(key, cache, cache_dir, hub_repo)
        if found is not None:
            return found

    scheduler = _search(runner, family, steps, num_warmup, solver, teacher, grid_size, seed, progress, options)
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


class CallBudget:
    """Model calls (one sample through the denoiser at one noise level) allowed and spent, stage by stage."""

    def __init__(self, limit: int):
        self.limit = limit
        self.spent: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.spent.values())

    @property
    def remaining(self) -> int:
        return self.limit - self.total

    def spend(self, stage: str, calls: int) -> None:
        self.spent[stage] = self.spent.get(stage, 0) + calls


def student_search_calls(steps: Sequence[int], grid_size: int, num_search: int) -> int:
    """Model calls of `student_path_dp` through a pipeline: every node of layers 1..max(steps) - 1, plus the one
    throw-away call per layer that moves the pipeline onto the injected states (layer 0 reuses the teacher's)."""
    return sum(grid_size - k + 1 for k in range(1, max(steps))) * num_search


def _search(
    runner, family, steps, num_warmup, solver, teacher, grid_size, seed, progress, options
) -> _GITSSchedulerBase:
    """Teacher, search, race (and refinement): the calibration proper (arguments as in `calibrate`)."""
    tic = time.perf_counter()
    timings = {}
    pipe, prompts = runner.pipe, runner.prompts
    num_search, num_holdout = options["num_search"], options["num_holdout"]
    budget = CallBudget(int(options["budget"] * num_warmup * grid_size))
    grid = family.grid(grid_size)
    fine, on_grid = family.fine_grid(grid_size)
    reference_scheduler = family.scheduler(teacher, {len(fine) - 1: fine})
    search_indices = list(range(num_search))
    if options["jump_cost"] == "student":
        targets, first_denoised = _record_fine_teacher(
            runner, reference_scheduler, on_grid, search_indices, progress, budget
        )
        timings["teacher_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        candidates = _student_candidates(
            runner, family, grid, targets, first_denoised, steps, solver, progress, budget
        )
    else:
        accumulator = (
            JumpCostAccumulator(grid, options["metric"])
            if options["jump_cost"] == "euler"
            else SolverJumpCostAccumulator(grid, solver, family.scheduler_class.path)
        )
        _record_teacher(runner, family.scheduler(teacher, {grid_size: grid}), accumulator, search_indices, progress)
        budget.spend("teacher", num_search * grid_size)
        timings["teacher_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        cost = accumulator.mean()
        coeffs = AUTO_COEFFS if options["coeff"] == "auto" else (float(options["coeff"]),)
        dp = {c: dp_schedules(cost, steps, c) for c in coeffs}
        candidates = {k: {f"gits_coeff_{c:g}": grid[dp[c][k]] for c in coeffs} for k in steps}
    timings["search_s"] = time.perf_counter() - tic

    tic = time.perf_counter()
    pool = list(range(num_search, num_search + num_holdout))
    scorer = HeldOutScorer(runner, family, solver, reference_scheduler, pool, budget)
    schedules, report = {}, {}
    if num_holdout:
        baselines = {k: family.baselines(k) for k in steps}
        if options["jump_cost"] == "student":
            # The search noises already have the teacher's final samples: screening the baselines there costs their
            # sampling only, and leaves the race (which pays for references too) two baselines to beat, not five.
            screen = HeldOutScorer(runner, family, solver, reference_scheduler, search_indices, budget, targets[-1])
            baselines = {k: _screened(screen, baselines[k], SCREENED_BASELINES) for k in steps}
        races, entrants = _race(scorer, candidates, baselines, steps, options["confidence"], progress)
        for k in steps:
            schedules[k], report[str(k)] = _decide(
                races[k], entrants[k], candidates[k], family.default(k), scorer, options["require_confidence"]
            )
    else:
        for k in steps:
            ((name, sigmas),) = candidates[k].items()
            schedules[k], report[str(k)] = sigmas, {"chosen": name, "coeff": _coeff_of(name), "confident": None}
    timings["selection_s"] = time.perf_counter() - tic
    if options["refine"] and num_holdout:
        tic = time.perf_counter()
        for k in steps:
            if k > 1:
                schedules[k], report[str(k)] = _refine(scorer, schedules[k], report[str(k)], family, grid_size)
        timings["refine_s"] = time.perf_counter() - tic

    for k in steps:
        entry = report[str(k)]
        logger.info("GITS %d steps: %s", k, entry.get("summary", entry["chosen"]))
    metadata = {
        "format_version": 1,
        "package_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": _model_name(pipe),
        "pipeline_class": type(pipe).__name__,
        # Plain JSON values only: tensors such as `prompt_embeds` are left out.
        "pipe_kwargs": {
            k: v for k, v in runner.pipe_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))
        },
        "num_prompts": len(prompts) if prompts else 0,
        "solver": solver,
        "teacher": teacher,
        "family": family.metadata["family"],
        "mu": family.metadata.get("mu"),
        "grid": {"type": family.metadata["grid_type"], "size": grid_size},
        **options,
        "num_warmup": num_warmup,
        "seed": seed,
        "model_calls": {
            **budget.spent,
            "total": budget.total,
            "budget": budget.limit,
            "teacher_equivalents": round(budget.total / (num_warmup * grid_size), 3),
        },
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
        "report": report,
    }
    return family.scheduler(solver, schedules, metadata)


def _check_options(
    steps, solver, teacher, grid_size, jump_cost, num_search, budget, confidence, metric, coeff, refine, num_holdout,
    batch_size, num_warmup, pipe_kwargs,
) -> dict:  # fmt: skip
    """Validate the calibration options before any model call; return them with their defaults filled in."""
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r} is not supported; choose one of {sorted(SOLVERS)}")
    if teacher not in TEACHERS:
        raise ValueError(f"teacher {teacher!r} is not supported; choose one of {TEACHERS}")
    if jump_cost not in JUMP_COSTS:
        raise ValueError(f"jump_cost {jump_cost!r} is not supported; choose one of {JUMP_COSTS}")
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not supported; choose one of {METRICS}")
    if metric != "l2" and jump_cost != "euler":
        raise ValueError(f"metric={metric!r} needs jump_cost='euler'; jump_cost={jump_cost!r} measures l2 only")
    if jump_cost == "student":
        if coeff is not None:
            raise ValueError(
                f"coeff={coeff!r} weights teacher-priced jumps; pass jump_cost='euler' or 'solver' to use it "
                "(jump_cost='student' measures the final error itself)"
            )
    elif coeff is None:
        coeff = "auto"
    elif coeff != "auto" and (isinstance(coeff, (str, bool)) or not coeff > 0):
        raise ValueError(f"coeff must be a positive number or 'auto', got {coeff!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_warmup < 1:
        raise ValueError(f"num_warmup must be >= 1, got {num_warmup}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if num_search is None:
        if jump_cost == "student":
            # The search costs about max(steps) x grid_size calls per noise: give it half the budget, so that the
            # race keeps the other half, and never more noises than 32 or half the warm-ups.
            per_noise = 2 * grid_size + student_search_calls(steps, grid_size, 1)
            num_search = max(1, min(32, num_warmup // 2, int(budget * num_warmup * grid_size / 2 / per_noise)))
        elif num_holdout is not None:
            num_search = num_warmup - num_holdout
        else:
            num_search = max(1, num_warmup * 3 // 4)
    if not 1 <= num_search <= num_warmup:
        raise ValueError(f"num_search must be in 1..{num_warmup} (num_warmup), got {num_search}")
    if num_holdout is None:
        num_holdout = num_warmup - num_search
    if not 0 <= num_holdout <= num_warmup - num_search:
        raise ValueError(
            f"num_holdout must be in 0..{num_warmup - num_search} (num_warmup - num_search), got {num_holdout}"
        )
    if num_holdout == 0 and (refine or coeff == "auto"):
        raise ValueError(
            "refine=True and coeff='auto' choose on held-out noises; leave num_holdout > 0 (num_search < num_warmup)"
        )
    if not budget > 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    limit = int(budget * num_warmup * grid_size)
    needed = num_search * (2 * grid_size if jump_cost == "student" else grid_size)
    if jump_cost == "student":
        needed += student_search_calls(steps, grid_size, num_search)
    if needed > limit:
        raise ValueError(
            f"budget={budget} allows {limit} model calls ({budget} x num_warmup {num_warmup} x grid_size {grid_size}), "
            f"but the teacher and search alone need {needed}; raise budget or num_warmup, or lower num_search or "
            "the largest step count"
        )
    reserved = sorted(set(pipe_kwargs) & set(RESERVED_KWARGS))
    if reserved:
        raise ValueError(f"calibration sets {reserved} itself; pass prompts=, num_inference_steps= and seed= instead")
    embeds = pipe_kwargs.get("prompt_embeds")
    if embeds is not None and len(embeds) != 1:
        raise ValueError(
            f"prompt_embeds must hold one prompt (batch 1; the warm-up noises are its images), got batch {len(embeds)}"
        )
    return {
        "jump_cost": jump_cost, "num_search": num_search, "num_holdout": num_holdout, "budget": budget,
        "confidence": confidence, "metric": metric, "coeff": coeff if coeff in (None, "auto") else float(coeff),
        "refine": refine,
    }  # fmt: skip


def _batches(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(indices[k : k + batch_size]) for k in range(0, len(indices), batch_size)]


def _record_teacher(runner, teacher_scheduler, accumulator, indices, progress) -> None:
    """Run the teacher over `indices` batch by batch into the jump-cost statistics (memory flat in their number)."""
    grid_size = len(accumulator.grid_sigmas) - 1
    for batch in tqdm(_batches(indices, runner.batch_size), desc="GITS teacher", unit="batch", disable=not progress):
        trajectory = runner.run(teacher_scheduler, batch, grid_size, keep_path=True)
        accumulator.update(torch.stack(trajectory.states), torch.stack(trajectory.denoised))


def _record_fine_teacher(
    runner, reference_scheduler, on_grid, indices, progress, budget
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher on the fine grid for the search noises: its states at the search grid's points (`on_grid`),
    (P, B, ...), and the denoised value at the first point (where every path starts: the search needs no call there)."""
    fine_steps = reference_scheduler.calibrated_steps[0]
    states, first_denoised = [], []
    for batch in tqdm(_batches(indices, runner.batch_size), desc="GITS teacher", unit="batch", disable=not progress):
        trajectory = runner.run(reference_scheduler, batch, fine_steps, keep_path=True)
        states.append(torch.stack([trajectory.states[i] for i in on_grid]))
        first_denoised.append(trajectory.denoised[0])
        budget.spend("teacher", len(batch) * fine_steps)
    return torch.cat(states, dim=1), torch.cat(first_denoised)


def _student_candidates(runner, family, grid, targets, first_denoised, steps, solver, progress, budget) -> dict:
    """`{N: {"gits": sigmas}}` from `student_path_dp`, evaluating each layer's nodes through the pipeline."""
    indices = list(range(targets.shape[1]))
    bar = tqdm(total=max(steps), desc="GITS search", unit="layer", disable=not progress)

    def evaluate(nodes: list[int], states: list[torch.Tensor]) -> list[torch.Tensor]:
        bar.update(1)
        if nodes == [0]:
            return [first_denoised]
        # One pipeline call visits every node: a first throw-away step from the pipeline's own start moves it onto
        # the first node's states, each later step returns the next node's states instead of its own result.
        sigmas = np.array([grid[0]] + [grid[n] for n in nodes] + [0.0])
        scheduler = family.scheduler("euler", {len(nodes) + 1: sigmas})
        denoised = [[] for _ in nodes]
        for batch in _batches(indices, runner.batch_size):
            inject = [state[batch] for state in states] + [None]
            trajectory = runner.run(scheduler, batch, len(nodes) + 1, keep_path=True, inject=inject)
            for n in range(len(nodes)):
                denoised[n].append(trajectory.denoised[n + 1])
        budget.spend("search", (len(nodes) + 1) * len(indices))
        return [torch.cat(parts) for parts in denoised]

    result = student_path_dp(grid, targets, steps, solver, evaluate, family.scheduler_class.path)
    bar.close()
    return {k: {"gits": grid[result.schedules[k]]} for k in steps}


class HeldOutScorer:
    """Held-out noises with teacher references (solved on the fine grid as they are needed), and per-noise losses of
    schedules sampled through the pipeline with the target solver: each sample's RMSE to its reference.

    Per-sample RMSE rather than squared error: one noise that ends in another mode then weighs in linearly, so a few
    dozen held-out noises rank schedules much as hundreds do; the report also gives the pooled RMSE, which the tail
    dominates."""

    def __init__(
        self,
        runner,
        family,
        solver,
        reference_scheduler,
        pool: list[int],
        budget: CallBudget,
        references: torch.Tensor | None = None,
    ):
        self.runner = runner
        self.family = family
        self.solver = solver
        self.reference_scheduler = reference_scheduler
        self.pool = pool
        self.budget = budget
        # `references` are the pool's teacher samples where they are already solved (the search noises).
        self.used: list[int] = list(pool) if references is not None else []
        self.references: list[torch.Tensor] = [references] if references is not None else []
        self._losses: dict[tuple, torch.Tensor] = {}

    @property
    def fine_steps(self) -> int:
        return self.reference_scheduler.calibrated_steps[0]

    def next_noises(self, count: int) -> list[int]:
        """The next `count` unused held-out noises (fewer at the end of the pool), with their references solved."""
        batch = self.pool[len(self.used) : len(self.used) + count]
        if batch:
            self.references.append(self.runner.final_states(self.reference_scheduler, batch, self.fine_steps))
            self.budget.spend("teacher", len(batch) * self.fine_steps)
            self.used += batch
        return batch

    def losses(self, sigmas: np.ndarray, noises: list[int]) -> torch.Tensor:
        """Per-noise RMSE of `sigmas` on `noises` (a contiguous run of `used`), sampling only noises not seen yet."""
        key = tuple(np.round(np.asarray(sigmas, dtype=np.float64), 10))
        known = self._losses.get(key, torch.zeros(0, dtype=torch.float64))
        start, stop = self.used.index(noises[0]), self.used.index(noises[-1]) + 1
        if stop > len(known):
            new = self.used[len(known) : stop]
            finals = self.samples(sigmas, new)
            self.budget.spend("selection", self.cost(sigmas, len(new)))
            reference = torch.cat(self.references)[len(known) : stop]
            errors = (finals.double() - reference.double()).flatten(1).pow(2).mean(1).sqrt()
            known = self._losses[key] = torch.cat([known, errors])
        return known[start:stop]

    def samples(self, sigmas: np.ndarray, noises: list[int]) -> torch.Tensor:
        """Final samples of `sigmas` with the target solver from `noises`, through the pipeline."""
        k = len(sigmas) - 1
        return self.runner.final_states(self.family.scheduler(self.solver, {k: sigmas}), noises, k)

    def cost(self, sigmas: np.ndarray, count: int) -> int:
        """Model calls that scoring `sigmas` on `count` more noises takes."""
        return (len(sigmas) - 1) * count


def _screened(screen: "HeldOutScorer", baselines: dict[str, np.ndarray], keep: int) -> dict[str, np.ndarray]:
    """The `keep` baselines with the lowest mean error on the screening noises."""
    errors = {name: float(screen.losses(sigmas, screen.used).mean()) for name, sigmas in baselines.items()}
    return {name: baselines[name] for name in sorted(errors, key=errors.get)[:keep]}


def _race(scorer, candidates, baselines, steps, confidence, progress) -> tuple[dict[int, PairedRace], dict[int, dict]]:
    """Race each step count's searched schedules against its baselines, a batch of held-out noises per round,
    until every race is decided or the budget or the held-out noises run out. Returns the races and their entrants'
    schedules."""
    races, entrants = {}, {}
    # Each look tests again: the confidence is split over the most rounds the budget and the pool could pay for.
    cheapest_round = RACE_ROUND * (scorer.fine_steps + min(steps))
    looks = max(1, min(math.ceil(len(scorer.pool) / RACE_ROUND), scorer.budget.remaining // cheapest_round))
    for k in steps:
        entrants[k] = {**candidates[k], **{name: s for name, s in baselines[k].items() if name not in candidates[k]}}
        races[k] = PairedRace(list(entrants[k]), set(baselines[k]), confidence, min_noises=2 * RACE_ROUND, looks=looks)
    bar = tqdm(total=len(scorer.pool), desc="GITS held-out race", unit="noise", disable=not progress)
    while len(scorer.used) < len(scorer.pool):
        open_races = [k for k in steps if not races[k].decided]
        if not open_races:
            break
        count = min(RACE_ROUND, len(scorer.pool) - len(scorer.used))
        round_cost = count * scorer.fine_steps + sum(
            scorer.cost(entrants[k][name], count) for k in open_races for name in races[k].alive
        )
        if round_cost > scorer.budget.remaining:
            break
        noises = scorer.next_noises(count)
        for k in open_races:
            races[k].add({name: scorer.losses(entrants[k][name], noises) for name in races[k].alive})
        bar.update(count)
    bar.close()
    return races, entrants


def _decide(
    race: PairedRace, entrants: dict, searched: dict, default: np.ndarray, scorer, require_confidence: bool
) -> tuple[np.ndarray, dict]:
    """The race's choice and its report entry, with the error of the pipeline's own default schedule on the same
    noises where the budget still allows scoring it. A race that got no noise (the budget ran out first) leaves the
    searched schedule in place, unchecked."""
    if race.num_noises == 0:
        name, sigmas = min(searched.items())
        summary = f"{name} unchecked: the budget left no room for a held-out race (raise budget or num_warmup)"
        return np.asarray(sigmas, dtype=np.float64), {
            "chosen": name, "coeff": _coeff_of(name), "confident": None, "held_out_noises": 0, "summary": summary,
        }  # fmt: skip
    chosen, confident = race.choice(require_confidence)
    summary = race.summary(chosen)
    for name, row in summary.items():
        row["pooled_rmse"] = float(race.losses[name].pow(2).mean()) ** 0.5  # per-sample RMSEs of equal-sized samples
    entry = {
        "chosen": chosen,
        "coeff": _coeff_of(chosen),
        "confident": confident,
        "held_out_noises": race.num_noises,
        "gits_error": summary[chosen]["mean_loss"],
        "gits_pooled_rmse": summary[chosen]["pooled_rmse"],
        "default_error": None,
        "candidates": summary,
        "searched_sigmas": {name: [float(s) for s in sigmas] for name, sigmas in searched.items()},
    }
    noises = scorer.used[: race.num_noises]
    if noises and scorer.cost(default, len(noises)) <= scorer.budget.remaining:
        entry["default_error"] = float(scorer.losses(default, noises).mean())
    noises = f"{race.num_noises} held-out noises"
    if confident:
        entry["summary"] = f"{chosen} beats every baseline with {race.confidence:.0%} confidence on {noises}"
    elif chosen in searched:
        runner_up = min((name for name in race.alive if name != chosen), key=race.mean)
        entry["summary"] = (
            f"{chosen} leads on {noises} (mean RMSE {race.mean(chosen):.4g} vs {runner_up} {race.mean(runner_up):.4g}), "
            f"not yet with {race.confidence:.0%} confidence"
        )
    else:
        best_searched = min(searched, key=race.mean)
        entry["summary"] = f"{chosen} is as good as this budget finds ({best_searched} did not beat it on {noises})"
    return np.asarray(entrants[chosen], dtype=np.float64), entry


def _refine(scorer, sigmas, entry, family, grid_size, rounds: int = 4, sweeps: int = 2) -> tuple[np.ndarray, dict]:
    """Coordinate descent on the interior points in the grid's coordinate, by 2, 1, 1/2 and 1/4 grid spacings.

    Each sweep tries moving every point both ways on the race's held-out noises and keeps the better move if it
    lowers the mean error on each half of them, which guards against fitting their noise. A round repeats its sweep
    (up to `sweeps` times) while some point moved. Stops when the budget would be exceeded.
    """
    noises = list(scorer.used)
    best = np.asarray(sigmas, dtype=np.float64).copy()
    best_losses = scorer.losses(best, noises)
    half = len(noises) // 2
    t = family.to_coordinate(best[:-1])
    grid_spacing = family.spacing(grid_size)
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
                    lower = trial_t[i + 1] + delta / 2 if i + 1 < len(trial_t) else family.lowest
                    if lower < trial_t[i] < trial_t[i - 1] - delta / 2:
                        trial = np.append(family.from_coordinate(trial_t), 0.0)
                        if scorer.cost(trial, len(noises)) > scorer.budget.remaining:
                            return _refined(best, best_losses, entry, sigmas)
                        trials.append((trial_t, trial, scorer.losses(trial, noises)))
                improving = [
                    trial for trial in trials
                    if (best_losses - trial[2])[:half].mean() > 0 and (best_losses - trial[2])[half:].mean() > 0
                ]  # fmt: skip
                if improving:
                    t, best, best_losses = min(improving, key=lambda trial: float(trial[2].mean()))
                    moved = True
            if not moved:
                break
    return _refined(best, best_losses, entry, sigmas)


def _refined(best, best_losses, entry, before) -> tuple[np.ndarray, dict]:
    if np.array_equal(best, before):
        return best, entry
    entry = {
        **entry,
        "chosen": entry["chosen"] + "+refined",
        "gits_error": float(best_losses.mean()),
        "gits_pooled_rmse": float(best_losses.pow(2).mean()) ** 0.5,
        "chosen_sigmas_before_refine": [float(s) for s in before],
    }
    return best, entry


def _coeff_of(name: str) -> float | None:
    return float(name.removeprefix("gits_coeff_")) if name.startswith("gits_coeff_") else None


def _model_name(pipe) -> str | None:
    config = getattr(pipe, "config", None) or {}
    name = getattr(pipe, "name_or_path", None) or config.get("_name_or_path")
    return str(name) if name is not None else None
