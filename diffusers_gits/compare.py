"""`compare`: score any set of schedules on your own model and settings against a fine teacher on fresh noises.

"Which schedule is best for my model at 6 steps?" Each schedule is sampled through the pipeline with the target solver
on noises no calibration uses (indices from `FRESH_NOISES_START`), against the teacher on the fine grid that
calibration uses, and reported with pooled RMSE, per-sample RMSE (mean and 95% CI), and the paired per-noise difference
in squared error to the best schedule (by pooled RMSE) of each step count.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibration.choice import HeldOutScorer
from .calibration.execution import Executor, process_state
from .calibration.recorder import open_pipeline
from .calibration.selection import mean_interval, paired_difference
from .calibration.settings import TeacherName
from .calibration.stages import equal_rotation_sigmas, teacher_targets
from .geometry import frame_rotation
from .plotting import plots_available, save_error_plot, save_image_grid
from .schedules import check_step_count
from .solvers import SolverName


#: Noise indices from here on are never warm-ups (calibration uses 0 .. num_warmup - 1).
FRESH_NOISES_START = 2**31
#: Noises whose teacher trajectories give the `tors` schedule: apart from the scored ones and from every warm-up.
TORS_NOISES = range(FRESH_NOISES_START - 16, FRESH_NOISES_START)
#: Short names accepted for the published tables.
ALIASES = {"ays": "ays_sd15", "sd15": "gits_sd15_published"}


def resolve_schedules(
    names: Sequence[str], family, steps: Sequence[int], mu: float | None, solver: str
) -> dict[str, dict]:
    """`{label: {N: sigmas}}` for each requested schedule: a baseline of the model's family, `default` (what the
    pipeline runs today with `solver`'s stock scheduler), or `gits:PATH_OR_REPO` (a saved or shared GITS schedule)."""
    from .scheduling_gits_common import scheduler_from_config
    from .scheduling_gits_flow_match import GITSFlowMatchScheduler
    from .serialization import fetch_schedule_config

    resolved = {}
    for name in names:
        if name.startswith("gits:"):
            scheduler = scheduler_from_config(fetch_schedule_config(name.removeprefix("gits:")))
            flow = isinstance(scheduler, GITSFlowMatchScheduler)
            per_step = family.metadata.get("mu_per_step") or {}  # Flux.2: the pipeline's mu at each step count
            resolved[name] = {
                k: scheduler.schedule_for(k, per_step.get(str(k), mu)) if flow else scheduler.schedule_for(k)
                for k in steps
            }
            continue
        key = ALIASES.get(name, name)
        if key == "default":
            resolved[name] = {k: family.default(k, solver) for k in steps}
            continue
        available = family.baselines(steps[0])
        if key not in available:
            raise ValueError(
                f"schedule {name!r} is not known for this model; choose from {sorted(available) + ['default']}, "
                f"{sorted(ALIASES)} or gits:PATH_OR_REPO"
            )
        resolved[name] = {k: family.baselines(k)[key] for k in steps}
    return resolved


def compare_schedules(
    pipe,
    num_inference_steps: int | Sequence[int],
    schedules: Sequence[str] = ("default", "uniform", "karras"),
    prompts: Sequence[str] | None = None,
    solver: SolverName = "dpmpp_2m",
    num_noises: int = 64,
    batch_size: int = 16,
    teacher: TeacherName = "ipndm",
    grid_size: int = 61,
    seed: int = 0,
    output_dir: str | Path | None = None,
    **pipe_kwargs,
) -> dict[str, dict[int, dict[str, Any]]]:
    """Score `schedules` on `pipe` at each step count against the teacher on fresh noises.

    Args:
        pipe: a diffusers pipeline of a family GITS supports (as for `GITSScheduler.from_calibration`).
        num_inference_steps: one step count or several.
        schedules: names: `default` (the pipeline's own), a baseline (`uniform`, `karras`, `logsnr`, `ays` /
            `ays_sd15`, `sd15` / `gits_sd15_published` on SD's noise schedule; `uniform`, `shifted`, `stock_default`,
            `beta`, `karras`, `exponential`, `oss_flux` for flow models), `tors` (equal Frenet-frame rotation on
            the teacher's trajectories of `TORS_NOISES`, noises apart from the scored ones: 16 teacher runs more),
            or `gits:PATH_OR_REPO`.
        prompts: prompts cycled over the noises; `None` for unconditional pipelines.
        solver (`str`, defaults to `"dpmpp_2m"`): the solver every schedule is sampled with.
        num_noises (`int`, defaults to 64): fresh noises per schedule and step count.
        batch_size (`int`, defaults to 16): samples per pipeline call.
        teacher (`str`, defaults to `"ipndm"`): the reference solver, on `grid_size` with every interval halved.
        grid_size (`int`, defaults to 61): the calibration grid the reference refines.
        seed (`int`, defaults to 0): seeds the noises (as in calibration, at indices no calibration uses).
        output_dir (`str` or `Path`, *optional*): where to write `error_vs_nfe.png` (and, for pixel-space models,
            `samples_nfe{N}.png`: a row per schedule, then the reference).
        **pipe_kwargs: passed to every pipeline call (`guidance_scale`, `height`, `width`, ...).

    Returns:
        `{name: {N: {"mean_rmse", "ci", "pooled_rmse", "minus_best", "minus_best_ci"}}}`; `minus_best` is the mean
        paired per-noise difference in squared error to the schedule with the lowest pooled RMSE at that N (0 for that
        one itself).
    """
    steps = sorted({check_step_count(k, "each of num_inference_steps") for k in np.atleast_1d(num_inference_steps)})
    if not schedules:
        raise ValueError("schedules is empty; name at least one, e.g. ['default', 'karras']")
    if num_noises < 2:
        raise ValueError(f"num_noises must be >= 2 for a confidence interval, got {num_noises}")
    if output_dir is not None and not plots_available():  # before the model calls, not after
        raise ImportError("output_dir= writes plots, which need matplotlib: pip install 'diffusers-gits[plots]'")
    runner, family, mu = open_pipeline(pipe, prompts, seed, batch_size, pipe_kwargs, steps)
    resolved = resolve_schedules([name for name in schedules if name != "tors"], family, steps, mu, solver)
    executor = Executor(process_state(runner.device))
    scorer = fresh_noise_scorer(executor, runner, family, solver, teacher, grid_size, num_noises)
    if "tors" in schedules:
        _, on_grid = family.fine_grid(grid_size)
        targets, denoised, _ = teacher_targets(
            executor, runner, scorer.reference_scheduler, on_grid, list(TORS_NOISES)
        )
        rotation = frame_rotation(targets, denoised)
        grid = family.grid(grid_size)
        tors = {k: equal_rotation_sigmas(rotation, k, family, grid) for k in steps}
        resolved = {name: tors if name == "tors" else resolved[name] for name in schedules}
    requests = [(name, k) for name in resolved for k in steps]
    scored = scorer.score([resolved[name][k] for name, k in requests], "compare", add_noises=num_noises)
    losses = {name: {} for name in resolved}
    for (name, k), loss in zip(requests, scored):
        losses[name][k] = loss
    table: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in resolved}
    for k in steps:
        best = min(resolved, key=lambda name: float(losses[name][k].mean()))
        for name in resolved:
            mean, ci = mean_interval(losses[name][k].sqrt())
            difference = paired_difference(losses[name][k], losses[best][k])
            table[name][k] = {
                "mean_rmse": mean,
                "ci": ci,
                "pooled_rmse": float(losses[name][k].mean()) ** 0.5,
                "minus_best": difference.mean,
                "minus_best_ci": 0.0 if name == best else difference.half_width,
            }
    if output_dir is not None:
        _write_pngs(Path(output_dir), table, resolved, scorer, steps, solver)
    return table


def fresh_noise_scorer(
    executor: Executor, runner, family, solver: str, teacher: str, grid_size: int, num_noises: int
) -> HeldOutScorer:
    """How `compare_schedules` scores: `solver`'s schedules on the first `num_noises` fresh noises (indices from
    `FRESH_NOISES_START`) against `teacher` on `grid_size`'s grid with every interval halved, the references solved
    as the noises are added (`HeldOutScorer.score(..., add_noises=...)`)."""
    fine, _ = family.fine_grid(grid_size)
    reference_scheduler = family.scheduler(teacher, {len(fine) - 1: fine})
    noises = list(range(FRESH_NOISES_START, FRESH_NOISES_START + num_noises))
    return HeldOutScorer(executor, runner, family, solver, reference_scheduler, noises)


def _write_pngs(output_dir: Path, table, resolved, scorer, steps, solver) -> None:
    errors = {name: {k: row[k]["mean_rmse"] for k in steps} for name, row in table.items()}
    save_error_plot(errors, output_dir / "error_vs_nfe.png", f"{solver}: RMSE to the teacher on fresh noises")
    reference = torch.cat(scorer.references)
    if reference.ndim == 4 and reference.shape[1] in (1, 3):  # pixels: worth looking at; latents are not
        k = steps[len(steps) // 2]
        shown = min(8, len(reference))
        rows = [scorer.samples(resolved[name][k], scorer.used[:shown]) for name in resolved]
        save_image_grid(torch.cat(rows + [reference[:shown]]), output_dir / f"samples_nfe{k}.png", columns=shown)


def format_table(table: dict[str, dict[int, dict[str, Any]]]) -> str:
    """The comparison as text: a row per schedule, per N pooled RMSE, mean per-sample RMSE ± CI, and the paired gap in
    squared error to the best."""
    steps = sorted(next(iter(table.values())))
    title = "pooled RMSE | per-sample ± 95% CI | vs best (MSE)"
    lines = [f"{'schedule':<24}" + "".join(f"{f'N={k}: {title}':>58}" for k in steps)]
    for name, row in table.items():
        cells = []
        for k in steps:
            r = row[k]
            gap = "best" if r["minus_best"] == 0 else f"+{r['minus_best']:.2e} ± {r['minus_best_ci']:.1e}"
            cells.append(f"{r['pooled_rmse']:.4f} | {r['mean_rmse']:.4f} ± {r['ci']:.4f} | {gap}".rjust(58))
        lines.append(f"{name:<24}" + "".join(cells))
    return "\n".join(lines)
