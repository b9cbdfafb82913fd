"""Quality and cost benchmark of the default GITS calibration; writes RESULTS.md / results.json (and the KDE files).

    python benchmarks/quality.py                  # the embedded digits DDPM (about 25 minutes on 2 CPU cores)
    python benchmarks/quality.py --model kde      # the exact Gaussian KDE of scikit-learn's 8x8 digits
    python benchmarks/quality.py --quick          # a smaller smoke run, results written under /tmp

Error: the N-step sample against a reference solution of the same ODE from the same noise (embedded model: 500-step
iPNDM; KDE: the exact solution), over test noises never used in calibration, as pooled RMSE (root of the mean over all
pixels and samples: a few noises that end in another mode weigh in, as users see them) and as the mean of per-sample
RMSE with its 95% CI. The default is compared with the best baseline of each cell by the 95% CI of the paired per-noise
difference in squared error. Distribution: sliced Wasserstein distance of the samples to real digits held out of
training. Cost: model calls of each calibration by stage, as a multiple of one GITS teacher run over the warm-ups.
"""

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler

from diffusers_gits import GITSScheduler, __version__
from diffusers_gits.calibration.search import dp_schedules
from diffusers_gits.calibration.selection import mean_interval, paired_difference
from diffusers_gits.embedded import load_embedded_pipeline
from diffusers_gits.evaluation import (
    TEST_SEED,
    UNetDenoiser,
    per_sample_rmse,
    reference_sigmas,
    sliced_wasserstein,
    solve,
    start_noise,
)
from diffusers_gits.schedules import baseline_schedules
from diffusers_gits.testing.data import digits_images
from diffusers_gits.testing.gaussian_mixture import GaussianMixture, GaussianMixturePipeline


SOLVERS = ("dpmpp_2m", "unipc", "ipndm", "euler")
NFES = (4, 5, 6, 8, 10)
DEFAULT = "gits_default"
#: Calibrations per solver. "gits_default" is the package default (`from_calibration` with no options); the schedule
#: its search found is reported too, as "gits_search" (before the held-out race decides whether to keep it).
VARIANTS = {
    "gits_paper": {"jump_cost": "euler", "coeff": 1.2, "num_holdout": 0},
    DEFAULT: {},
}

#: The `hedge` option measured on the exact models (`calibrate(hedge=...)`), as the variant "gits_hedged".
HEDGED = "gits_hedged"
HEDGED_VARIANT = {HEDGED: {"hedge": 0.5}}

#: The calibrated schedules of a score table; every other row is a baseline (the published GITS SD1.5 table too).
CALIBRATED = (*VARIANTS, HEDGED, "gits_search")

KDE_BANDWIDTH = 0.25
# clip_sample=False: DDPMScheduler clips x0 to [-1, 1] by default, and the exact mixture lives outside it.
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False}


def calibrate_variants(pipe, solver, num_warmup, log, variants=VARIANTS, **call_options):
    """Calibrate each of `variants` for `solver` (with `call_options` for every calibration: prompts, pipeline kwargs);
    returns their schedules per NFE (and the default's searched ones, as `gits_search`) and their costs."""
    schedules, costs = {}, {}
    for name, options in variants.items():
        tic = time.perf_counter()
        scheduler = GITSScheduler.from_calibration(
            pipe, list(NFES), num_warmup=num_warmup, batch_size=64, solver=solver, progress=False, cache=False,
            **options, **call_options,
        )  # fmt: skip
        meta = scheduler.calibration_record
        costs[name] = {
            "wall_s": time.perf_counter() - tic,
            **meta["timings"],
            "model_calls": meta["model_calls"],
            "chosen": {k: v["chosen"] for k, v in meta["report"].items()},
            "confident": {k: v.get("confident") for k, v in meta["report"].items()},
            "held_out_noises": {k: v.get("held_out_noises") for k, v in meta["report"].items()},
        }
        schedules[name] = {k: scheduler.schedule_for(k) for k in NFES}
        if name == DEFAULT:
            # Without a race (the budget ran out first) the returned schedule is the search's, unchecked.
            schedules["gits_search"] = {
                k: np.array(meta["report"][str(k)].get("searched_sigmas", {}).get("gits", schedules[name][k]))
                for k in NFES
            }
        log(f"  calibrated {name} for {solver} in {costs[name]['wall_s']:.1f} s: {costs[name]['chosen']}")
    return schedules, costs


def benchmark_solvers(pipe, baselines, solve, reference, real, num_warmup, log, variants=VARIANTS, **call_options):
    """For every solver: calibrate `variants` on `pipe` (with `call_options`), then score them and `baselines(N)` by
    `solve(sigmas, solver)` against `reference` (`score_schedules`). Returns `({solver: table}, {solver: costs})`."""
    tables, costs = {}, {}
    for solver in SOLVERS:
        schedules, costs[solver] = calibrate_variants(pipe, solver, num_warmup, log, variants, **call_options)
        tables[solver] = score_schedules(
            lambda k: {**baselines(k), **{name: per_k[k] for name, per_k in schedules.items()}},
            lambda sigmas: solve(sigmas, solver),  # noqa: B023 (called before the loop moves on)
            reference,
            real,
        )
        log(
            f"  {solver}: " + ", ".join(f"NFE {k}: {DEFAULT} {tables[solver][DEFAULT][k]['pooled']:.4f}" for k in NFES)
        )
    return tables, costs


def score_schedules(candidates_for, solve, reference: torch.Tensor, real: torch.Tensor) -> dict:
    """`{name: {N: scores}}` for every schedule `candidates_for(N)` gives, sampled by `solve(sigmas)`.

    Scores: mean per-sample RMSE and its 95% CI, pooled RMSE, SWD to `real`, the sigmas, and for the default (and the
    hedged variant) the paired per-noise difference in squared error to the best baseline (by pooled RMSE) with its
    95% CI.
    """
    table, squared = {}, {}
    for k in NFES:
        for name, sigmas in candidates_for(k).items():
            out = solve(sigmas)
            rmse, ci = mean_interval(per_sample_rmse(out, reference))
            squared[name, k] = (out.double() - reference.double()).flatten(1).pow(2).mean(1)
            table.setdefault(name, {})[k] = {
                "rmse": rmse,
                "ci": ci,
                "pooled": float(squared[name, k].mean()) ** 0.5,
                "swd": sliced_wasserstein(out, real),
                "sigmas": [round(float(s), 5) for s in sigmas],
            }
        best = best_baseline(table, k)
        for name in (DEFAULT, HEDGED):
            if name in table:
                difference = paired_difference(squared[name, k], squared[best, k])
                table[name][k]["vs_best"] = {
                    "name": best,
                    "mse_difference": difference.mean,
                    "ci": difference.half_width,
                }
    return table


def best_baseline(table: dict, k: int) -> str:
    """The baseline with the lowest pooled RMSE at `k` steps."""
    return min((name for name in table if name not in CALIBRATED), key=lambda name: table[name][k]["pooled"])


def step_overhead(
    stock_class=EulerDiscreteScheduler, gits_class=GITSScheduler, config: dict | None = None, repeats: int = 200
) -> dict[str, float]:
    """Per-step time of a GITS scheduler (each solver) over a stock scheduler's, on an SD-sized latent, both on the
    stock scheduler's 10-step schedule."""
    if config is None:
        config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    sample = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    output = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    scales_input = hasattr(stock_class, "scale_model_input")  # VP pipelines call it; flow pipelines do not

    def per_step(scheduler):
        times = []
        for _ in range(repeats // 10):
            scheduler.set_timesteps(10)
            x = sample.clone()
            tic = time.perf_counter()
            for t in scheduler.timesteps:
                x_in = scheduler.scale_model_input(x, t) if scales_input else x
                x = scheduler.step(output, t, x_in).prev_sample
            times.append((time.perf_counter() - tic) / 10)
        return statistics.median(times)

    stock_scheduler = stock_class(**config)
    stock = per_step(stock_scheduler)
    table = {"10": stock_scheduler.sigmas.tolist()}  # the stock schedule, as a calibrated table
    ratios = {"stock_us": stock * 1e6}
    for solver in SOLVERS:
        ratios[solver] = per_step(gits_class(**config, solver=solver, gits_sigmas=table)) / stock
    return ratios


def dp_timing() -> float:
    cost = np.triu(np.random.default_rng(0).random((102, 102)), 1)
    times = []
    for _ in range(5):
        tic = time.perf_counter()
        dp_schedules(cost, range(1, 21), 1.2)
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", choices=("embedded", "kde"), default="embedded", help="which model (default: embedded)"
    )
    parser.add_argument("--quick", action="store_true", help="small run for checking the script; writes to /tmp")
    args = parser.parse_args()
    num_test, num_warmup = (64, 64) if args.quick else (512, 256)
    out_dir = Path("/tmp/gits-quick") if args.quick else Path(__file__).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    log = timed_log(start)
    model = embedded_model(num_test, 100 if args.quick else 500) if args.model == "embedded" else kde_model(num_test)
    log(f"{model['name']}: reference {model['reference']}, SWD to real {model['reference_swd_to_real']:.4f}")
    results = {"model": {key: value for key, value in model.items() if isinstance(value, (str, float))}}
    results["solvers"], results["calibration_cost"] = {}, {}
    for solver in SOLVERS:
        variants = {**VARIANTS, **HEDGED_VARIANT} if args.model == "kde" else VARIANTS
        schedules, costs = calibrate_variants(model["pipe"], solver, num_warmup, log, variants)
        results["calibration_cost"][solver] = costs
        table = score_schedules(
            lambda k: {
                **baseline_schedules(model["noise"], k),
                **{name: per_k[k] for name, per_k in schedules.items()},
            },
            lambda sigmas: model["solve"](sigmas, solver),
            model["reference_samples"],
            model["real"],
        )
        results["solvers"][solver] = table
        log(f"  {solver}: " + ", ".join(f"NFE {k}: {DEFAULT} {table[DEFAULT][k]['pooled']:.4f}" for k in NFES))
        write(results, out_dir, args.model, start, num_test, num_warmup)
    log(f"wrote {out_dir / RESULT_FILES[args.model][0]}")


#: Markdown and JSON result files per model.
RESULT_FILES = {"embedded": ("RESULTS.md", "results.json"), "kde": ("RESULTS_KDE.md", "results_kde.json")}


def embedded_model(num_test: int, ref_steps: int) -> dict:
    """The embedded digits DDPM, its test noises and an iPNDM reference (checked against twice the steps)."""
    pipe = load_embedded_pipeline("digits")
    noise = GITSScheduler.from_config(pipe.scheduler.config).noise_schedule
    denoiser = UNetDenoiser(pipe.unet, noise, pipe.scheduler.config.prediction_type)
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    z = start_noise(num_test, shape, TEST_SEED)
    reference = solve(denoiser, z, reference_sigmas(noise, ref_steps), "ipndm")
    check = solve(denoiser, z[:64], reference_sigmas(noise, 2 * ref_steps), "ipndm")
    reference_error = float(per_sample_rmse(reference[:64], check).mean())
    real = digits_images("test")
    return {
        "name": "the embedded digits DDPM (16x16, SD noise schedule, epsilon)",
        "reference": f"{ref_steps}-step iPNDM (RMSE to a {2 * ref_steps}-step solve: {reference_error:.1e})",
        "pipe": pipe,
        "noise": noise,
        "solve": lambda sigmas, solver: solve(denoiser, z, sigmas, solver),
        "reference_samples": reference,
        "real": real,
        "reference_swd_to_real": sliced_wasserstein(reference, real),
    }


def kde_model(num_test: int, seed: int = TEST_SEED) -> dict:
    """The exact Gaussian KDE of the 1500 training digits at 8x8 on SD's noise schedule, driven like DDPMPipeline, on
    the noises of generator seeds `seed`, `seed + 1`, ...

    Its reference is the exact ODE solution down to sigma_min, then the final denoise every schedule ends with.
    """
    mixture = GaussianMixture.kde(digits_images("train", size=8), KDE_BANDWIDTH)
    pipe = GaussianMixturePipeline(mixture, DDPMScheduler(**SD_BETAS))
    noise = pipe.noise
    z = pipe.start_noise([torch.Generator().manual_seed(seed + i) for i in range(num_test)])
    start = z * (1 + noise.sigma_max**2) ** 0.5
    reference = mixture.exact_solution(start, [noise.sigma_max, noise.sigma_min, 0.0], steps_per_interval=2000)
    real = digits_images("test", size=8).reshape(-1, 64)
    return {
        "name": f"the exact Gaussian KDE of scikit-learn's 8x8 digits (bandwidth {KDE_BANDWIDTH}, SD noise schedule)",
        "reference": "the exact ODE solution (2000 log-sigma iPNDM steps to sigma_min, then the final denoise)",
        "pipe": pipe,
        "noise": noise,
        "solve": lambda sigmas, solver: solve(mixture.denoiser, z, sigmas, solver),
        "reference_samples": reference,
        "real": real,
        "reference_swd_to_real": sliced_wasserstein(reference, real),
    }


def timed_log(start: float):
    """A `log(message)` that prints `message` after the seconds since `start` (a `time.perf_counter()` reading)."""

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {message}", flush=True)

    return log


def run_setup(start: float, **fields) -> dict:
    """A results file's `setup`: package and library versions, the machine, `fields` (test and warm-up counts, ...)
    and the wall time since `start`."""
    return {
        "package_version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        **fields,
        "total_s": time.perf_counter() - start,
    }


def write(results, out_dir, model, start, num_test, num_warmup) -> None:
    """Write what is measured so far (after every solver: a long run that is stopped still leaves results)."""
    results["step_overhead_vs_euler_discrete"] = results.get("step_overhead_vs_euler_discrete") or step_overhead()
    results["dp_seconds_101_grid_k1_to_20"] = results.get("dp_seconds_101_grid_k1_to_20") or dp_timing()
    results["setup"] = run_setup(
        start,
        num_test=num_test,
        num_warmup=num_warmup,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    markdown, raw = RESULT_FILES[model]
    (out_dir / raw).write_text(json.dumps(results, indent=1))
    (out_dir / markdown).write_text(render(results, model))


def ratio_cells(table: dict, key: str = "pooled", name: str = DEFAULT) -> list[str]:
    """Per NFE, `name`'s error over the best baseline's (`key`: `"pooled"` or `"rmse"`), naming that baseline."""
    cells = []
    for k in NFES:
        best = min((n for n in table if n not in CALIBRATED), key=lambda row: table[row][k][key])
        cells.append(f"{table[name][k][key] / table[best][k][key]:.2f} (vs {best})")
    return cells


def ci_mark(versus: dict) -> str:
    """ "!" where a calibrated schedule is worse than the best baseline beyond the paired 95% CI, "+" where better."""
    if versus["mse_difference"] > versus["ci"]:
        return "!"
    return "+" if -versus["mse_difference"] > versus["ci"] else ""


def cell_marks(table: dict, chosen: dict, name: str = DEFAULT) -> list[str]:
    """Per NFE, `name`'s `ci_mark`; none where it returned the best baseline itself (its stored sigmas differ from
    the benchmark's by rounding, which a paired CI on one schedule can resolve)."""
    return [
        "" if chosen[str(k)] == table[name][k]["vs_best"]["name"] else ci_mark(table[name][k]["vs_best"]) for k in NFES
    ]


def marked_cells(table: dict, chosen: dict, name: str = DEFAULT) -> list[str]:
    """Per NFE: `name`'s ratio to the best baseline (`ratio_cells`) with its `cell_marks` and what the calibration
    chose in brackets."""
    return [
        f"{cell}{mark} [{chosen[str(k)]}]"
        for cell, mark, k in zip(ratio_cells(table, name=name), cell_marks(table, chosen, name), NFES)
    ]


def hedge_lines(rows: list[tuple[str, dict, dict]], header: list[str]) -> list[str]:
    """The hedged variant's section of a report: per row (label, score table, calibration costs) its marked ratios,
    then the default's and its summaries over all rows; nothing where the variant was not measured."""
    if not all(HEDGED in table for _, table, _ in rows):
        return []
    lines = [
        "",
        f"## With `hedge={HEDGED_VARIANT[HEDGED]['hedge']}`",
        "",
        "`calibrate(hedge=0.5)`: where the race keeps the searched schedule without confirming it, that schedule moved "
        "halfway toward the race's best baseline, point by point in log-SNR (`gits_hedged`, no model call); "
        "otherwise the default. Its ratio to the best baseline, marked ! (worse beyond the paired 95% CI) or + (better "
        "beyond it), what it returned in brackets:",
        "",
        *header,
    ]
    for label, table, costs in rows:
        lines.append(f"| {label} | " + " | ".join(marked_cells(table, costs[HEDGED]["chosen"], HEDGED)) + " |")
    lines += ["", f"- {variant_summary(rows, DEFAULT)}.", f"- {variant_summary(rows, HEDGED)}."]
    return lines


def runs_hedge_lines(results: dict, header: list[str]) -> list[str]:
    """`hedge_lines` for a results file of several `runs` (a row per run and solver)."""
    rows = [
        (f"{run} | {solver}", table, run_results["calibration_cost"][solver])
        for run, run_results in results["runs"].items()
        for solver, table in run_results["solvers"].items()
    ]
    return hedge_lines(rows, header)


def variant_summary(rows: list[tuple[str, dict, dict]], name: str) -> str:
    """`name` over every row's (label, score table, calibration costs) NFEs: mean and worst pooled-RMSE ratio to the
    best baseline, and cells beyond the paired CI (`cell_marks`)."""
    ratios, marks = [], []
    for _, table, costs in rows:
        for k in NFES:
            ratios.append(table[name][k]["pooled"] / table[best_baseline(table, k)][k]["pooled"])
        marks += cell_marks(table, costs[name]["chosen"], name)
    return (
        f"`{name}` over {len(ratios)} cells: mean ratio {sum(ratios) / len(ratios):.3f}, worst {max(ratios):.2f}, "
        f"{marks.count('!')} worse than the best baseline beyond the 95% CI, {marks.count('+')} better beyond it"
    )


def schedule_table_lines(table: dict, metric: str) -> list[str]:
    """One solver's markdown table: a row per schedule, per NFE its pooled RMSE and mean RMSE ± 95% CI (`"rmse"`)
    or SWD (`"swd"`)."""
    lines = ["| schedule | " + " | ".join(f"NFE {k}" for k in NFES) + " |", "|---|" + "---|" * len(NFES)]
    for name, per_k in table.items():
        if metric == "rmse":
            cells = [f"{per_k[k]['pooled']:.4f} / {per_k[k]['rmse']:.4f} ± {per_k[k]['ci']:.4f}" for k in NFES]
        else:
            cells = [f"{per_k[k]['swd']:.4f}" for k in NFES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render(results: dict, model: str = "embedded") -> str:
    setup = results["setup"]
    header = "| solver | " + " | ".join(f"NFE {k}" for k in NFES) + " |"
    rule = "|---|" + "---|" * len(NFES)
    lines = [
        "# Benchmark results" + (" (exact digits KDE)" if model == "kde" else ""),
        "",
        f"Written by `python benchmarks/quality.py{' --model kde' if model == 'kde' else ''}` (diffusers-gits "
        f"{setup['package_version']}, torch {setup['torch']}, Python {setup['python']}, {setup['machine']}; "
        f"{setup['total_s'] / 60:.1f} min). Model: {results['model']['name']}. {setup['num_test']} test noises never "
        f"used in calibration; calibration on {setup['num_warmup']} warm-up noises with the package defaults. "
        f"Reference: {results['model']['reference']}.",
        "",
        "## Headline: the package default vs the best baseline, pooled RMSE ratio",
        "",
        "Ratio < 1 means the default is closer to the reference. The baselines: uniform timesteps, Karras, log-SNR, "
        "Align-Your-Steps SD1.5 and the GITS authors' published SD1.5 table. The default returns the searched "
        "schedule where it beat every baseline on held-out noises with 95% confidence (cells marked *), and "
        "otherwise whichever of it and the best baseline has the lower pooled error over the held-out and search "
        "noises together (every comparison in squared error); the brackets name what it chose. "
        "Targets: never > 1; <= 0.85 at NFE 5 and 6 (dpmpp_2m, unipc, ipndm).",
        "",
        header,
        rule,
    ]
    for solver, table in results["solvers"].items():
        cost = results["calibration_cost"][solver][DEFAULT]
        cells = [
            cell + ("*" if cost["confident"][str(k)] else "") + f" [{cost['chosen'][str(k)]}]"
            for cell, k in zip(ratio_cells(table), NFES)
        ]
        lines.append(f"| {solver} | " + " | ".join(cells) + " |")
    rows = [(solver, table, results["calibration_cost"][solver]) for solver, table in results["solvers"].items()]
    lines += hedge_lines(rows, [header, rule])
    lines += [
        "",
        "Paired difference in per-noise squared error, default minus best baseline (mean ± 95% CI, x1e-4; negative "
        "favours the default):",
        "",
        header,
        rule,
    ]
    for solver, table in results["solvers"].items():
        cells = []
        for k in NFES:
            versus = table[DEFAULT][k]["vs_best"]
            cells.append(f"{1e4 * versus['mse_difference']:+.2f} ± {1e4 * versus['ci']:.2f}")
        lines.append(f"| {solver} | " + " | ".join(cells) + " |")
    lines += ["", "Mean of per-sample RMSE, the same ratio:", "", header, rule]
    for solver, table in results["solvers"].items():
        lines.append(f"| {solver} | " + " | ".join(ratio_cells(table, "rmse")) + " |")
    swd_title = (
        "Sliced Wasserstein distance to held-out real digits (reference solution: "
        f"{results['model']['reference_swd_to_real']:.4f})"
    )
    for metric, title in (
        ("rmse", "Error to reference: pooled RMSE / mean per-sample RMSE ± 95% CI"),
        ("swd", swd_title),
    ):
        lines += ["", f"## {title}", ""]
        for solver, table in results["solvers"].items():
            lines += [f"### {solver}", "", *schedule_table_lines(table, metric), ""]
    teacher = setup["num_warmup"] * 61
    lines += [
        "## Calibration cost",
        "",
        "Model calls per calibration (all five NFEs at once) by stage; 'x teacher' divides the total by one GITS "
        f"teacher run over the warm-ups ({setup['num_warmup']} x 61 = {teacher} calls), the unit of the `budget` "
        "option (default 2.0). The previous default (0.1.0: coeff sweep, held-out choice, refinement) spent "
        "183k-203k calls per solver on the embedded model.",
        "",
        "| solver | variant | wall s | teacher calls | search calls | race calls | total | x teacher | held-out noises (NFE 4/5/6/8/10) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for solver, costs in results["calibration_cost"].items():
        for name, c in costs.items():
            calls = c["model_calls"]
            used = "/".join(str(c["held_out_noises"][str(k)] or 0) for k in NFES)
            lines.append(
                f"| {solver} | {name} | {c['wall_s']:.1f} | {calls.get('teacher', 0)} | {calls.get('search', 0)} | "
                f"{calls.get('selection', 0)} | {calls['total']} | {calls['total'] / teacher:.2f} | {used} |"
            )
    overhead = results["step_overhead_vs_euler_discrete"]
    lines += [
        "",
        "## Speed",
        "",
        f"- DP over a 101-point grid for every K in 1..20: {1000 * results['dp_seconds_101_grid_k1_to_20']:.1f} ms "
        "(median of 5).",
        "- Scheduler step on a 1x4x64x64 latent, as a ratio to `EulerDiscreteScheduler.step` "
        f"({overhead['stock_us']:.0f} us) in the same run: "
        + ", ".join(f"{s} {overhead[s]:.2f}x" for s in SOLVERS)
        + ".",
        f"- Peak resident memory of the whole benchmark process: {setup['peak_rss_mib']:.0f} MiB.",
        "",
        "## Variants",
        "",
        "- `gits_paper`: the paper's search alone (Euler-jump L2 cost on the teacher's states, coeff 1.2, no "
        "held-out check).",
        '- `gits_search`: the default\'s own search (`jump_cost="student"`: the target solver stepped from the '
        "student's own states along the grid), before the race.",
        "- `gits_default`: the package default: that search, raced against the baselines on held-out warm-up noises "
        "(scored against the teacher on the grid with every interval halved); the searched schedule is kept only "
        "where it wins with 95% confidence, else the best baseline.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
