"""`diffusers-gits demo`: prompts to images on an embedded text-to-image model, in few steps, GITS against the
schedules people use, with numbers.

On the embedded `StableDiffusionPipeline` (`--model sd`) or `StableDiffusion3Pipeline` (`--model flow`), trained
here on coloured shapes: calibrate GITS with prompts and classifier-free guidance, then

1. score GITS and the baselines (pooled RMSE to a fine reference on fresh noises and prompts, `compare_schedules`),
2. generate through `pipe(prompts, num_inference_steps=N, guidance_scale=...)` with the pipeline's stock scheduler,
   each baseline schedule and GITS, and measure prompt adherence (`diffusers_gits.shapes.prompt_adherence`),
3. write a labelled image grid (a row per schedule, a column per prompt, a 50-step reference row), the error-vs-NFE
   plot and the tables (`results.json`).
"""

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .calibration.recorder import open_pipeline
from .compare import compare_schedules, resolve_schedules
from .embedded import GUIDANCE_SCALE, load_embedded_pipeline
from .evaluation import sliced_wasserstein
from .plotting import plots_available, save_error_plot, save_labelled_grid
from .scheduling_gits import GITSScheduler
from .shapes import images_for_prompts, prompt_adherence, prompts_grid


DemoModel = Literal["sd", "flow"]
#: The baselines shown for each model: what users of that family pick today.
BASELINES: dict[str, tuple[str, ...]] = {
    "sd": ("default", "karras", "ays", "sd15"),
    "flow": ("default", "uniform", "shifted", "beta", "karras", "exponential", "oss_flux"),
}
#: Warm-up noises each model's demo calibrates on: on the SD-style model 64 come within about 0.03 of the package
#: default's 256 on the mean ratio to the best baseline (`benchmarks/RESULTS_COST.md`: 0.67 with DPM-Solver++, 0.82
#: at 32); on the flow model no size below 128 does, so its slower demo keeps to 32. At either size the budget leaves
#: no room for a held-out race over five step counts (the report says "unchecked").
DEMO_WARMUP: dict[str, int] = {"sd": 64, "flow": 32}
#: Seeds of the calibration prompts, the scored prompts and the generated images (generator seeds of their own, apart
#: from each other).
CALIBRATION_PROMPT_SEED, TEST_PROMPT_SEED, IMAGE_SEED = 100, 200, 2_000_000
GITS = "gits (calibrated)"
#: The embedded pipeline (`diffusers_gits.embedded`) each demo model runs on.
EMBEDDED_MODEL = {"sd": "sd", "flow": "sd3"}


def load_demo_pipeline(model: DemoModel):
    """The embedded pipeline of `model` and the guidance scale it is sampled with."""
    return load_embedded_pipeline(EMBEDDED_MODEL[model]), GUIDANCE_SCALE[EMBEDDED_MODEL[model]]


def calibrate_with_prompts(
    pipe, steps, solver: str, num_warmup: int, guidance: float, progress: bool = False, hedge: float = 0.0
):
    """GITS calibrated on a shapes pipeline with prompts drawn like its captions and classifier-free guidance (a
    `GITSFlowMatchScheduler` for the flow model); `hedge` as in `calibrate`."""
    return GITSScheduler.from_calibration(
        pipe,
        steps,
        prompts=prompts_grid(64, CALIBRATION_PROMPT_SEED),
        guidance_scale=guidance,
        num_warmup=num_warmup,
        batch_size=16,
        solver=solver,
        progress=progress,
        cache=False,
        hedge=hedge,
    )


def compare_with_baselines(pipe, model: DemoModel, steps, solver: str, saved: Path, prompts, guidance: float) -> dict:
    """`compare_schedules` of the model's baselines and the GITS schedule saved in `saved` on fresh noises and
    `prompts`, the GITS row named `GITS`."""
    names = [*BASELINES[model], f"gits:{saved}"]
    table = compare_schedules(
        pipe, steps, names, prompts=prompts, solver=solver, num_noises=len(prompts), guidance_scale=guidance
    )
    return {(GITS if name.startswith("gits:") else name): row for name, row in table.items()}


def run_demo(
    output_dir: str | Path = "demo_output",
    model: DemoModel = "sd",
    solver: str = "dpmpp_2m",
    steps: Sequence[int] = (4, 5, 6, 8, 10),
    num_warmup: int | None = None,
    num_test: int = 32,
    num_prompts: int = 8,
    reference_steps: int = 50,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Calibrate GITS on an embedded text-to-image model, compare it with today's schedules, write PNGs and tables.

    Args:
        output_dir: where the scheduler, `samples_nfe{N}.png`, `error_vs_nfe.png` and `results.json` go.
        model (`str`, defaults to `"sd"`): `"sd"` (the SD-style pipeline) or `"flow"` (the SD3 pipeline).
        solver (`str`, defaults to `"dpmpp_2m"`): the solver GITS and the baseline schedules sample with.
        steps: the step counts (NFE) to calibrate and compare.
        num_warmup (`int`, *optional*): calibration warm-up noises (default: `DEMO_WARMUP[model]`, 64 for `"sd"`, 32
            for `"flow"`).
        num_test (`int`, defaults to 32): fresh noises (and prompts) for the RMSE and the prompt adherence.
        num_prompts (`int`, defaults to 8): columns of the image grid.
        reference_steps (`int`, defaults to 50): steps of the stock scheduler for the reference row and adherence.
        progress (`bool`, defaults to `True`): show the calibration's progress bar.
        echo: where the printout goes.

    Returns:
        `{"rmse": {schedule: {N: pooled RMSE}}, "adherence": {schedule: {N: rate}}, "calibration": {...}}`.
    """
    if model not in BASELINES:
        raise ValueError(f"model {model!r} is not a demo model; choose one of {sorted(BASELINES)}")
    if not plots_available():  # before minutes of work, not after
        raise ImportError(
            "the demo writes image grids and a plot, which need matplotlib: pip install 'diffusers-gits[plots]'"
        )
    steps = sorted(set(steps))
    num_warmup = DEMO_WARMUP[model] if num_warmup is None else num_warmup
    output_dir = Path(output_dir)
    pipe, guidance = load_demo_pipeline(model)
    stock = pipe.scheduler
    echo(
        f"Embedded model: {type(pipe).__name__} on coloured shapes (32x32), shipped with {type(stock).__name__}; "
        f"guidance {guidance}, solver {solver}, NFE {steps}."
    )

    tic = time.perf_counter()
    scheduler = calibrate_with_prompts(pipe, steps, solver, num_warmup, guidance, progress)
    calibration_s = time.perf_counter() - tic
    scheduler.save_pretrained(output_dir / "scheduler")
    calls = scheduler.calibration_record["model_calls"]
    echo(
        f"Calibrated in {calibration_s:.0f} s ({calls['total']} model calls, {calls['teacher_equivalents']}x one "
        f"teacher run over the warm-ups); saved to {output_dir / 'scheduler'}."
    )
    # The calibration's own verdict per N, to read the scores below by: an unconfirmed lead can come out behind.
    verdicts = {k: scheduler.calibration_report[str(k)]["summary"] for k in steps}
    echo("What the calibration's held-out race found:")
    for k, verdict in verdicts.items():
        echo(f"  NFE {k}: {verdict}")

    test_prompts = prompts_grid(num_test, TEST_PROMPT_SEED)
    echo(
        f"Scoring GITS and {len(BASELINES[model])} baselines on {num_test} fresh noises and prompts against a fine "
        "reference..."
    )
    table = compare_with_baselines(pipe, model, steps, solver, output_dir / "scheduler", test_prompts, guidance)
    rmse = {name: {k: row[k]["pooled_rmse"] for k in steps} for name, row in table.items()}
    _print_rmse(rmse, steps, solver, echo)

    schedulers = schedulers_to_compare(pipe, stock, scheduler, BASELINES[model], steps, solver, guidance)
    echo(
        f"Generating {num_test} images per schedule and NFE through the pipeline, and {num_test} at "
        f"{reference_steps} steps of {type(stock).__name__}, to read their shapes, colours and backgrounds..."
    )
    adherence, distance, shown = generate_and_score(
        pipe, schedulers, steps, test_prompts, num_prompts, guidance, reference_steps
    )
    _print_adherence(adherence, steps, echo)

    plot = save_error_plot(
        rmse,
        output_dir / "error_vs_nfe.png",
        f"{type(pipe).__name__} (shapes), {solver}, guidance {guidance}: pooled RMSE to the reference",
    )
    grids = [
        save_labelled_grid(
            {_row_label(name, solver): images for name, images in rows.items()},
            [prompt.removeprefix("a ") for prompt in test_prompts[:num_prompts]],
            output_dir / f"samples_nfe{k}.png",
            f"{k} steps (NFE {k}), guidance {guidance}; the last row: {type(stock).__name__}, {reference_steps} steps",
        )
        for k, rows in shown.items()
    ]
    results = {
        "model": type(pipe).__name__,
        "solver": solver,
        "guidance_scale": guidance,
        "steps": steps,
        "rmse": rmse,
        "adherence": adherence,
        "distance_to_real": distance,
        "calibration": {"seconds": calibration_s, "model_calls": calls, "verdicts": verdicts},
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    echo("")
    echo(f"Wrote {', '.join(str(g) for g in grids)}, {plot} and {output_dir / 'results.json'}.")
    return results


def _row_label(name: str, solver: str) -> str:
    """A grid row's label: the schedule and, where it is not the stock scheduler's own, the solver it ran with."""
    return name if name.startswith(("stock", "reference")) else f"{name} + {solver}"


def schedulers_to_compare(pipe, stock, gits, baselines, steps, solver, guidance) -> dict[str, object]:
    """`{row name: scheduler}`: the stock scheduler, each baseline as a GITS-family scheduler with that table, GITS."""
    _, family, mu = open_pipeline(pipe, ["a red circle"], 0, 1, {"guidance_scale": guidance}, steps)
    resolved = resolve_schedules(list(baselines), family, steps, mu, solver)
    schedulers = {f"stock ({type(stock).__name__})": stock}
    schedulers.update({name: family.scheduler(solver, table) for name, table in resolved.items()})
    schedulers[GITS] = gits
    return schedulers


@torch.no_grad()
def _images(pipe, scheduler, prompts, num_steps, guidance) -> np.ndarray:
    pipe.scheduler = scheduler
    generators = [torch.Generator().manual_seed(IMAGE_SEED + i) for i in range(len(prompts))]
    return pipe(
        list(prompts), num_inference_steps=num_steps, guidance_scale=guidance, generator=generators, output_type="np"
    ).images


def generate_and_score(pipe, schedulers, steps, prompts, num_shown, guidance, reference_steps):
    """Generate `prompts` through `pipe` with each scheduler at each N, and with the stock scheduler at
    `reference_steps`; score each set by prompt adherence and by its distance to real images of the same prompts.

    Returns:
        `(adherence, distance, shown)`: `{row: {N: share of images matching their prompt}}` (the reference row under
        `"reference (S steps)"`), `{row: {N: sliced Wasserstein distance to real images (pixels in [0, 1])}}` and
        `{N: {row: the first num_shown images, (n, H, W, 3) in [0, 1]}}`.
    """
    real = torch.from_numpy(images_for_prompts(prompts, seed=IMAGE_SEED)).flatten(1)
    stock = pipe.scheduler
    adherence: dict[str, dict[int, float]] = {}
    distance: dict[str, dict[int, float]] = {}
    shown: dict[int, dict[str, np.ndarray]] = {k: {} for k in steps}

    def score(name, k, images):
        adherence.setdefault(name, {})[k] = prompt_adherence(list(images), prompts)["all"]
        distance.setdefault(name, {})[k] = sliced_wasserstein(torch.from_numpy(images).flatten(1), real)
        shown[k][name] = images[:num_shown]

    try:
        for name, scheduler in schedulers.items():
            for k in steps:
                score(name, k, _images(pipe, scheduler, prompts, k, guidance))
        reference = _images(pipe, stock, prompts, reference_steps, guidance)
    finally:
        pipe.scheduler = stock
    for k in steps:
        score(f"reference ({reference_steps} steps)", k, reference)
    return adherence, distance, shown


def _print_rmse(rmse, steps, solver, echo) -> None:
    baselines = [name for name in rmse if name != GITS]
    echo("")
    echo(f"Pooled RMSE to the reference on fresh noises and prompts (lower is better), solver {solver}")
    echo(f"{'NFE':>4} " + " ".join(f"{name[:12]:>12}" for name in rmse) + f" {'gits / best':>12}")
    for k in steps:
        best = min(rmse[name][k] for name in baselines)
        echo(f"{k:>4} " + " ".join(f"{rmse[name][k]:>12.4f}" for name in rmse) + f" {rmse[GITS][k] / best:>12.3f}")


def _print_adherence(adherence, steps, echo) -> None:
    echo("")
    echo("Prompt adherence (share of images showing the asked shape, colour and background; higher is better)")
    echo(f"{'schedule':<34}" + "".join(f"{f'NFE {k}':>8}" for k in steps))
    for name, row in adherence.items():
        echo(f"{name[:33]:<34}" + "".join(f"{row[k]:>8.2f}" for k in steps))
