"""Calibration: run a diffusers pipeline to find GITS schedules for it, in three stages within one call budget.

1. Teacher: the teacher solver on the fine grid for the search noises (`teacher_targets`), or, for the teacher-priced
   jump costs of the paper, over the grid into `JumpCostAccumulator` statistics (`teacher_jump_costs`, memory flat
   in the number of noises).
2. Search: the DP, along the student's own states (`student_candidates`) or on the teacher's jump costs.
3. Choice (`diffusers_gits.calibration.choice`): held-out noises race the searched schedules against the baselines.

`calibrate` validates the settings (`CalibrationSettings`), looks the result up in the cache and on the Hub, and
runs the stages through an `Executor`, which splits the pipeline calls over accelerate's processes and stores each
in the checkpoint as it finishes. Every pipeline patch lives in `diffusers_gits.calibration.recorder`.
"""

import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..cache import cache_load, cache_store, calibration_key, jsonable, model_identity
from ..errors import ScheduleNotFoundError
from ..geometry import aggregate, equal_rotation_positions, frame_rotation, per_trajectory
from ..schedule_format import FORMAT_VERSION
from ..scheduling_gits import GITSScheduler
from ..scheduling_gits_common import register_calibration, scheduler_from_config
from ..scheduling_gits_flow_match import GITSFlowMatchScheduler
from ..serialization import fetch_calibration_record, fetch_schedule_config
from ..solvers import SolverName
from .checkpoint import CalibrationCheckpoint
from .choice import (
    SCREENED_BASELINES,
    HeldOutScorer,
    coeff_of,
    decide,
    default_error,
    hedge_unconfirmed,
    refine_schedule,
    run_race,
    screened,
)
from .execution import CallBudget, Executor, Job, Progress, broadcast, process_state
from .families import ModelFamily
from .recorder import PipelineRunner, batch_key, open_pipeline
from .search import JumpCostAccumulator, Metric, SolverJumpCostAccumulator, dp_schedules, student_path_dp
from .settings import DEFAULT_SOLVER, CalibrationSettings, JumpCost, TeacherName


logger = logging.getLogger(__name__)

#: coeff values swept by `coeff="auto"`: the authors' range (ComfyUI ships 0.80-1.50) on both sides of 1.
AUTO_COEFFS = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)


def calibrate(
    pipe,
    num_inference_steps: int | Sequence[int],
    prompts: Sequence[str] | None = None,
    num_warmup: int = 256,
    batch_size: int = 16,
    solver: SolverName | None = None,
    teacher: TeacherName = "ipndm",
    grid_size: int = 61,
    jump_cost: JumpCost = "student",
    arrivals_per_node: int = 1,
    num_search: int | None = None,
    budget: float = 2.0,
    confidence: float = 0.95,
    require_confidence: bool = False,
    metric: Metric = "l2",
    coeff: float | str | None = None,
    refine: bool = False,
    hedge: float = 0.0,
    num_holdout: int | None = None,
    seed: int = 0,
    progress: bool = True,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    hub_repo: str | None = None,
    push: bool = False,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    **pipe_kwargs,
) -> GITSScheduler | GITSFlowMatchScheduler:
    """Calibrate GITS schedules for `pipe` by running it, and return a GITS scheduler that samples with them.

    The default search runs the target solver along the student's own states (`jump_cost="student"`,
    `diffusers_gits.calibration.search.student_path_dp`) on `num_search` warm-up noises, then races its schedule against the
    baseline schedules people use today on held-out warm-up noises, adding noises only while the ranking is unclear
    (`diffusers_gits.calibration.selection.PairedRace`). Schedules are compared by squared error to the teacher, whose mean is
    the pooled error. A searched schedule that beats every baseline with `confidence` is returned as confirmed;
    otherwise the one of the searched schedule and the best baseline with the lower pooled error over the held-out
    noises and the search's own noises together (where the search is favoured: its lead there stands unless the
    held-out noises contradict it by more); baselines are ranked over both. A baseline
    returned says so in the report: nothing better was found (`require_confidence=True` keeps a searched schedule
    only where it is confirmed; a teacher-priced coeff sweep races all its schedules). Every stage stays within
    `budget`.

    Args:
        pipe: a diffusers pipeline whose scheduler is VP / DDPM-style (SD 1.x/2.x, SDXL, PixArt, DDPMPipeline, ...)
            or FlowMatchEuler-style flow matching (SD3, Flux). Flow models are calibrated at the resolution of
            `pipe_kwargs` (`height` / `width`): the `mu` the pipeline passes there is recorded with the schedules.
        num_inference_steps: one step count or several; one calibration serves them all.
        prompts: prompts cycled over the warm-up samples; `None` for unconditional pipelines (or the empty prompt).
        num_warmup (`int`, defaults to 256): warm-up noises in all: the first `num_search` for the search, the rest
            held out for the choice (used only as far as the race needs them).
        batch_size (`int`, defaults to 16): samples per pipeline call. Under `accelerate launch` (or `torchrun`) the
            calls are split over the processes (each holding the pipeline on its own device); every process returns
            the same scheduler, the same as one process would.
        solver (`str`, *optional*): the solver the schedules are for (`euler`, `ipndm`, `dpmpp_2m`, `unipc`).
            Defaults to `"dpmpp_2m"`, or `"unipc"` for a pipeline that ships `UniPCMultistepScheduler` with flow
            sigmas (Wan), whose solver it is.
        teacher (`str`, defaults to `"ipndm"`): the teacher solver (`ipndm` or `dpmpp_2m`). It gives the search its
            targets and the held-out noises their references, on the search grid with every interval halved. iPNDM
            (fourth order) is as accurate there as DPM-Solver++(2M) on the embedded model and 50x more accurate on an
            exact Gaussian mixture; a reference less accurate than the schedules it judges would rank them by their
            likeness to its own error.
        grid_size (`int`, defaults to 61): fine-grid points (plus the final sigma = 0): uniform in timestep for VP
            models, uniform in sigma before the model's shift for flow models (`diffusers_gits.calibration.families`).
        jump_cost (`str`, defaults to `"student"`): how the DP prices a jump: `"student"` steps the target solver
            from the student's own states (model calls: about max(steps) x grid_size x num_search); `"euler"` (the
            paper) and `"solver"` price it from the teacher's states with one Euler step or the solver's own step
            (no model calls beyond the teacher; `diffusers_gits.calibration.search`).
        arrivals_per_node (`int`, defaults to 1): `"student"` only: how many paths into each grid node the search keeps
            and evaluates the model at, each rank one more pass of model calls per layer. With more than one, the
            state the solver steps from decides exactly (UniPC's corrector needs the model output at the node; with one
            it is estimated from the teacher's) and every kept path offers its final sample.
        num_search (`int`, *optional*): warm-up noises the search runs on. For `"student"` it defaults to as many as
            half the budget pays for, at most 32 and half of `num_warmup` (24 at the defaults with steps up to 10);
            for the teacher-priced costs to `num_warmup - num_holdout`, or three quarters of `num_warmup`.
        budget (`float`, defaults to 2.0): the most model calls the calibration may make in all (teacher, search,
            race and refinement), as a multiple of `num_warmup * grid_size` (one GITS teacher run over the
            warm-ups). Refused before any model call when the search alone would exceed it.
        confidence (`float`, defaults to 0.95): the race drops a schedule once it is worse than the leader with this
            confidence; the report says whether the choice beat every baseline with it.
        require_confidence (`bool`, defaults to `False`): keep a searched schedule only where it beats every baseline
            with `confidence`, else return the best baseline. By default an unconfirmed race is decided by the
            point estimate over the held-out and search noises: at the default budget the held-out noises rarely
            confirm a 5-15% difference either way.
        metric (`str`, defaults to `"l2"`): `jump_cost="euler"` only: `l2`, `l1` or `dev` (the authors' deviation).
        coeff (`float` or `"auto"`, *optional*): teacher-priced costs only: the DP's per-jump weight factor; `"auto"`
            (their default) puts the DP's schedules for every coeff in `AUTO_COEFFS` into the race.
        refine (`bool`, defaults to `False`): after the race, move each point of the chosen schedule while the
            held-out error falls on both halves of the race's noises, within the budget.
        hedge (`float`, defaults to 0.0): where the race keeps a searched schedule without confirming it (its lead
            over the best baseline is a point estimate, or no race ran), return it moved this fraction of the way
            toward that baseline, point by point in log-SNR (`diffusers_gits.schedules.log_snr_blend`; the report
            names it `gits_hedged` and the baseline in `hedged_toward`): a schedule between the search's fit to its
            few noises and the baseline's robustness to the rest. No model call; confirmed choices and baselines are
            returned as they are. 0 (off) or in (0, 1); with held-out noises only.
        num_holdout (`int`, *optional*): held-out warm-up noises available to the race; defaults to all warm-ups the
            search does not use (`num_warmup - num_search`). 0 returns the search's schedules unchecked.
        seed (`int`, defaults to 0): seeds the per-sample noises.
        progress (`bool`, defaults to `True`): show a progress bar (main process only): model calls made out of
            the most the budget allows, the stage and its samples, elapsed time and an upper bound on the time left.
        cache (`bool`, defaults to `True`): look the result up in, and store it to, the local cache, keyed by
            everything that changes it (every component's class, config and tensors, the pipeline class, the noise
            schedule, prompts, every option above but `batch_size` and `progress`, pipeline kwargs, package version;
            `diffusers_gits.cache.calibration_key`). A hit makes no model call and logs a warning naming what it was
            made on.
        cache_dir (`str` or `Path`, *optional*): the cache folder; defaults to `$DIFFUSERS_GITS_CACHE` or
            `$HF_HOME/diffusers_gits`.
        hub_repo (`str`, *optional*): a Hub model repo to look in first (subfolder = the cache key).
        push (`bool`, defaults to `False`): with `hub_repo`, publish the result there after calibrating.
        checkpoint_dir (`str` or `Path`, *optional*): a folder where every finished pipeline call is stored as it
            finishes. Calling again with the same arguments after a crash or Ctrl-C continues where it stopped and
            returns exactly the schedules an uninterrupted run would. A folder holding another model's, other
            settings' or another package version's calibration raises `CheckpointMismatchError` naming what differs.
            Any number of processes can resume it.
        resume (`bool`, defaults to `True`): `False` empties `checkpoint_dir` first and starts over.
        **pipe_kwargs: passed to every pipeline call (`guidance_scale`, `height`, `width`, `negative_prompt`, ...).

    Returns:
        A [`GITSScheduler`] (VP) or [`GITSFlowMatchScheduler`] (flow matching) with `gits_sigmas` for every requested
        step count, a calibration summary in its config and the full record (settings, model calls, timings,
        trajectory regularity, report) in `calibration_record`.
    """
    arguments = dict(locals())  # the signature above is the one declaration of the options and their defaults
    if solver is None:
        shipped = getattr(pipe, "scheduler", None)
        flow_unipc = type(shipped).__name__ == "UniPCMultistepScheduler" and shipped.config.get("use_flow_sigmas")
        arguments["solver"] = "unipc" if flow_unipc else DEFAULT_SOLVER
    options = {name: arguments[name] for name in CalibrationSettings.option_names()}
    settings = CalibrationSettings.create(num_inference_steps, pipe_kwargs, **options)
    if push and not hub_repo:
        raise ValueError("push=True needs hub_repo= (the Hub model repo to publish to)")
    # A flow pipeline's shift depends on the resolution it computes inside __call__: it is read (no denoiser call)
    # first, so that it keys the cache too.
    runner, family, mu = open_pipeline(
        pipe, settings.prompts, settings.seed, settings.batch_size, settings.pipe_kwargs, settings.steps
    )
    state = process_state(runner.device)
    shift = {"mu": mu, **({"mu_per_step": family.metadata["mu_per_step"]} if "mu_per_step" in family.metadata else {})}
    model = model_identity(pipe) if cache or hub_repo or checkpoint_dir else None
    key = calibration_key(model, {**settings.result_fields(), **shift}) if cache or hub_repo else None
    if key is not None:
        found = _lookup(key, cache, cache_dir, hub_repo) if state.is_main_process else None
        found = broadcast(state, found)
        if found is not None:
            config, record = found
            scheduler = scheduler_from_config(config)
            scheduler.calibration_record = record
            return scheduler

    checkpoint = None
    if checkpoint_dir is not None:
        identity = {
            "package_version": __version__, "model": model, **shift,
            "settings": jsonable(settings.checkpoint_fields()),
        }  # fmt: skip
        checkpoint = CalibrationCheckpoint(checkpoint_dir, identity, resume)
    bar = Progress(settings.call_limit, enabled=progress and state.is_main_process)
    try:
        executor = Executor(state, checkpoint, bar, CallBudget(settings.call_limit))
        schedules, metadata = _run_stages(executor, runner, family, settings)
        bar.finish()
    finally:
        bar.close()
    # Every process computed the same schedules; the main process's timings and date make the configs equal too.
    scheduler = family.scheduler(settings.solver, schedules, broadcast(state, metadata))
    if state.is_main_process:
        if cache:
            config = json.loads(scheduler.to_json_string())
            cache_store(key, config, scheduler.calibration_record, Path(cache_dir) if cache_dir else None)
        if push:
            scheduler.push_to_hub(hub_repo, subfolder=key)
    state.wait_for_everyone()
    return scheduler


def _lookup(
    key: str, cache: bool, cache_dir: str | Path | None, hub_repo: str | None
) -> tuple[dict, dict | None] | None:
    """A previous result's scheduler config and calibration record for `key` from the local cache, then the Hub;
    `None` when neither has a usable one."""
    if cache:
        found = cache_load(key, Path(cache_dir) if cache_dir else None)
        if found is not None:
            config, record = found
            try:
                scheduler_from_config(config)
            except ValueError as error:  # valid JSON the scheduler refuses
                logger.warning("Ignoring an unusable GITS cache entry (it will be replaced): %s", error)
            else:
                meta = config.get("calibration") or {}
                logger.warning(
                    "Using the cached GITS calibration %s (made on model %s, pipeline %s, at %s); pass cache=False "
                    "to calibrate again",
                    key,
                    meta.get("model"),
                    meta.get("pipeline_class"),
                    meta.get("created", "an unknown date"),
                )
                return config, record
    if hub_repo:
        try:
            config = fetch_schedule_config(hub_repo, subfolder=key)
            scheduler_from_config(config)
            record = fetch_calibration_record(hub_repo, subfolder=key)
        except ScheduleNotFoundError as error:  # only "not there" means "calibrate"; reach or read errors are raised
            logger.warning("No GITS schedule for this setting in %s (%s); calibrating.", hub_repo, error)
            return None
        if cache:
            cache_store(key, config, record, Path(cache_dir) if cache_dir else None)
        logger.info("GITS calibration found on the Hub: %s, subfolder %s", hub_repo, key)
        return config, record
    return None


@dataclass
class _Searched:
    """What the teacher and search stages leave the choice: the searched schedules per step count, the zero-call
    candidates (TORS), the teacher's final samples on the search noises (student search only), and how regular the
    teacher's trajectories are."""

    candidates: dict[int, dict[str, np.ndarray]]
    zero_call: dict[int, dict[str, np.ndarray]]
    teacher_finals: torch.Tensor | None
    regularity: dict


def _run_stages(
    executor: Executor, runner: PipelineRunner, family: ModelFamily, settings: CalibrationSettings
) -> tuple[dict[int, np.ndarray], dict]:
    """Teacher, search and choice; returns the schedules and the calibration metadata."""
    timings: dict[str, float] = {}
    fine, on_grid = family.fine_grid(settings.grid_size)
    reference_scheduler = family.scheduler(settings.teacher, {len(fine) - 1: fine})
    searched = _teacher_and_search(executor, runner, family, settings, reference_scheduler, on_grid, timings)
    schedules, report = _choose(executor, runner, family, settings, reference_scheduler, searched, timings)
    for k in settings.steps:
        entry = report[str(k)]
        logger.info("GITS %d steps: %s", k, entry.get("summary", entry["chosen"]))
    return schedules, _metadata(runner.pipe, family, settings, executor.budget, timings, searched.regularity, report)


def _teacher_and_search(
    executor: Executor,
    runner: PipelineRunner,
    family: ModelFamily,
    settings: CalibrationSettings,
    reference_scheduler,
    on_grid: np.ndarray,
    timings: dict[str, float],
) -> _Searched:
    """The teacher on the search noises, then the search: the student path DP, or the teacher-priced DP per coeff."""
    steps, grid_size, solver = settings.steps, settings.grid_size, settings.solver
    tic = time.perf_counter()
    grid = family.grid(grid_size)
    search_indices = list(range(settings.num_search))
    if settings.jump_cost == "student":
        targets, grid_denoised, regularity = teacher_targets(
            executor, runner, reference_scheduler, on_grid, search_indices
        )
        timings["teacher_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        candidates = student_candidates(
            executor, runner, family, grid, targets, grid_denoised, steps, solver, settings.arrivals_per_node
        )
        rotation = frame_rotation(targets, grid_denoised)
        zero_call = {k: {"tors": equal_rotation_sigmas(rotation, k, family, grid)} for k in steps}
        finals = targets[-1]
    else:
        if settings.jump_cost == "euler":
            accumulator = JumpCostAccumulator(grid, settings.metric)
        else:
            accumulator = SolverJumpCostAccumulator(grid, solver, family.scheduler_class.path)
        teacher_scheduler = family.scheduler(settings.teacher, {grid_size: grid})
        regularity = teacher_jump_costs(executor, runner, teacher_scheduler, accumulator, search_indices)
        timings["teacher_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        cost = accumulator.mean()
        zero_call = {k: {} for k in steps}
        coeffs = AUTO_COEFFS if settings.coeff == "auto" else (float(settings.coeff),)
        dp = {c: dp_schedules(cost, steps, c) for c in coeffs}
        candidates = {k: {f"gits_coeff_{c:g}": grid[dp[c][k]] for c in coeffs} for k in steps}
        finals = None
    timings["search_s"] = time.perf_counter() - tic
    return _Searched(candidates, zero_call, finals, regularity)


def _choose(
    executor: Executor,
    runner: PipelineRunner,
    family: ModelFamily,
    settings: CalibrationSettings,
    reference_scheduler,
    searched: _Searched,
    timings: dict[str, float],
) -> tuple[dict[int, np.ndarray], dict[str, dict]]:
    """The choice per step count: screening on the search noises, the held-out race, the decision (with the pipeline
    default's error on the race's noises), and refinement; without held-out noises the search's schedules as they
    are."""
    tic = time.perf_counter()
    steps, solver, candidates = settings.steps, settings.solver, searched.candidates
    schedules, report = {}, {}
    if not settings.num_holdout:
        for k in steps:
            ((name, sigmas),) = candidates[k].items()
            schedules[k], report[str(k)] = sigmas, {"chosen": name, "coeff": coeff_of(name), "confident": None}
        timings["selection_s"] = time.perf_counter() - tic
        return schedules, report
    pool = list(range(settings.num_search, settings.num_search + settings.num_holdout))
    scorer = HeldOutScorer(executor, runner, family, solver, reference_scheduler, pool)
    # TORS (equal frame rotation on the teacher's trajectories) costs no model call: it races as a baseline.
    baselines = {k: {**family.baselines(k), **searched.zero_call[k]} for k in steps}
    screenings = {}
    if searched.teacher_finals is not None:
        # The search noises already have the teacher's final samples: screening there costs the sampling only,
        # leaves the race (which pays for references too) two baselines to beat, not five, and shows where the
        # search lost even on the noises it was fitted to.
        search_indices = list(range(settings.num_search))
        screen = HeldOutScorer(
            executor, runner, family, solver, reference_scheduler, search_indices, searched.teacher_finals
        )
        screenings = screened(screen, candidates, baselines, SCREENED_BASELINES)
        baselines = {k: screenings[k].baselines for k in steps}
    races, entrants = run_race(scorer, candidates, baselines, steps, settings.confidence, screenings)
    for k in steps:
        schedules[k], report[str(k)] = decide(
            races[k], entrants[k], candidates[k], settings.require_confidence, screenings.get(k)
        )
        if races[k].num_noises:
            report[str(k)]["default_error"] = default_error(scorer, family.default(k, solver), races[k].num_noises)
        if settings.hedge:
            schedules[k], report[str(k)] = hedge_unconfirmed(
                schedules[k], report[str(k)], races[k], entrants[k], candidates[k], screenings.get(k),
                settings.hedge, family.scheduler_class.path,
            )  # fmt: skip
    timings["selection_s"] = time.perf_counter() - tic
    if settings.refine:
        tic = time.perf_counter()
        for k in steps:
            if k > 1:
                schedules[k], report[str(k)] = refine_schedule(
                    scorer, schedules[k], report[str(k)], family, settings.grid_size
                )
        timings["refine_s"] = time.perf_counter() - tic
    return schedules, report


def _metadata(
    pipe, family: ModelFamily, settings: CalibrationSettings, budget, timings: dict, regularity: dict, report: dict
) -> dict:
    """The calibration record: who made it on what, with which settings, at what cost, and the report."""
    return {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": _model_name(pipe),
        "pipeline_class": type(pipe).__name__,
        **settings.metadata(),
        "family": family.metadata["family"],
        "mu": family.metadata.get("mu"),
        **({"mu_per_step": family.metadata["mu_per_step"]} if "mu_per_step" in family.metadata else {}),
        "grid": {"type": family.metadata["grid_type"], "size": settings.grid_size},
        "model_calls": {
            **budget.spent,
            "total": budget.total,
            "budget": budget.limit,
            "teacher_equivalents": round(budget.total / (settings.num_warmup * settings.grid_size), 3),
        },
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
        # How regular the teacher's trajectories on the search noises are (no extra model calls): why one schedule
        # calibrated on them can serve every prompt.
        "regularity": regularity,
        "report": report,
    }


def teacher_targets(
    executor: Executor, runner: PipelineRunner, reference_scheduler, on_grid: np.ndarray, indices: list[int]
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The teacher on the fine grid for the search noises: its states at the search grid's points (`on_grid`),
    (P, B, ...), its denoised values at all of them but the last, (P - 1, B, ...) (the first is where every path
    starts: the search needs no call there), and the regularity of those trajectories
    (`diffusers_gits.geometry.aggregate`)."""
    (fine_steps,) = reference_scheduler.calibrated_steps

    def run(batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        trajectory = runner.run(reference_scheduler, batch, fine_steps, keep_path=True)
        states = torch.stack([trajectory.states[i] for i in on_grid])
        return states, torch.stack([trajectory.denoised[i] for i in on_grid[:-1]])

    jobs = [
        Job(f"teacher/{batch_key(batch)}", len(batch) * fine_steps, len(batch), functools.partial(run, batch))
        for batch in runner.batches(indices)
    ]
    results = executor.map("teacher", jobs)
    regularity = aggregate([per_trajectory(states) for states, _ in results])
    states = torch.cat([states for states, _ in results], dim=1)
    return states, torch.cat([denoised for _, denoised in results], dim=1), regularity


def equal_rotation_sigmas(rotation: np.ndarray, num_steps: int, family: ModelFamily, grid: np.ndarray) -> np.ndarray:
    """The TORS schedule (`diffusers_gits.geometry.equal_rotation_positions`) on the search grid: positions between
    its points are placed linearly in the grid's own coordinate; the last step runs to sigma = 0."""
    positions = equal_rotation_positions(rotation, num_steps)
    coordinate = family.to_coordinate(grid[:-1])
    sigmas = family.from_coordinate(np.interp(positions, np.arange(len(coordinate)), coordinate))
    return np.append(np.asarray(sigmas, dtype=np.float64), 0.0)


def teacher_jump_costs(executor: Executor, runner: PipelineRunner, teacher_scheduler, accumulator, indices) -> dict:
    """Run the teacher over `indices` into the jump-cost statistics, one batch per process at a time, so memory does
    not grow with the number of noises; batches are added in order (the float64 sums do not depend on the process
    count). Returns the trajectories' regularity (`diffusers_gits.geometry.aggregate`)."""
    (num_steps,) = teacher_scheduler.calibrated_steps

    def run(batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        trajectory = runner.run(teacher_scheduler, batch, num_steps, keep_path=True)
        return torch.stack(trajectory.states), torch.stack(trajectory.denoised)

    batches = runner.batches(indices)
    parts = []
    for start in range(0, len(batches), executor.num_processes):
        jobs = [
            Job(f"teacher/{batch_key(batch)}", len(batch) * num_steps, len(batch), functools.partial(run, batch))
            for batch in batches[start : start + executor.num_processes]
        ]
        for states, denoised in executor.map("teacher", jobs):
            accumulator.update(states, denoised)
            parts.append(per_trajectory(states, denoised))
    return aggregate(parts)


def student_candidates(
    executor: Executor,
    runner: PipelineRunner,
    family: ModelFamily,
    grid,
    targets,
    grid_denoised,
    steps,
    solver,
    arrivals_per_node: int = 1,
) -> dict:
    """`{N: {"gits": sigmas}}` from `student_path_dp`, evaluating each layer's nodes through the pipeline (the
    executor counts the calls as `"search"`). `grid_denoised` are the teacher's denoised values at the grid's points: the first is
    where every path starts, so the search needs no call there."""
    first_denoised = grid_denoised[0]
    indices = list(range(targets.shape[1]))
    passes = 0

    def evaluate(nodes: list[int], states: list[torch.Tensor]) -> list[torch.Tensor]:
        nonlocal passes
        passes += 1
        if nodes == [0]:
            return [first_denoised]
        # One pipeline call visits every node: a first throw-away step from the pipeline's own start moves it onto
        # the first node's states, each later step returns the next node's states instead of its own result.
        sigmas = np.array([grid[0]] + [grid[n] for n in nodes] + [0.0])
        scheduler = family.scheduler("euler", {len(nodes) + 1: sigmas})

        def run(batch: list[int]) -> list[torch.Tensor]:
            inject = [state[batch] for state in states] + [None]
            trajectory = runner.run(scheduler, batch, len(nodes) + 1, keep_path=True, inject=inject)
            return trajectory.denoised[1:]

        jobs = [
            Job(
                f"search/pass {passes}/{batch_key(batch)}",
                len(batch) * (len(nodes) + 1),
                len(batch),
                functools.partial(run, batch),
            )
            for batch in runner.batches(indices)
        ]
        results = executor.map("search", jobs)
        return [torch.cat([result[n] for result in results]) for n in range(len(nodes))]

    result = student_path_dp(
        grid,
        targets,
        steps,
        solver,
        evaluate,
        family.scheduler_class.path,
        arrivals_per_node=arrivals_per_node,
        target_denoised=grid_denoised,
    )
    return {k: {"gits": grid[result.schedules[k]]} for k in steps}


def _model_name(pipe) -> str | None:
    config = getattr(pipe, "config", None) or {}
    name = getattr(pipe, "name_or_path", None) or config.get("_name_or_path")
    return str(name) if name is not None else None


register_calibration(calibrate)
