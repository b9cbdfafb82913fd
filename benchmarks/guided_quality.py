"""Quality and cost benchmark of GITS under classifier-free guidance, on exact class-conditional models; writes
benchmarks/RESULTS_GUIDED.md and results_guided.json.

    python benchmarks/guided_quality.py            # the full run (about 20 minutes on 2 CPU cores)
    python benchmarks/guided_quality.py --quick    # a smaller smoke run, results written under /tmp

Model: the Gaussian kernel density estimate (bandwidth 0.25) of the first 1500 of scikit-learn's 8x8 digits with each
component named by its digit (`diffusers_gits.testing.gaussian_mixture.ClassConditionalMixture`), so that a prompt
("0".."9") selects a class and classifier-free guidance is exact: D(x) + w (D(x | digit) - D(x)). It is sampled as a
VP model on SD's noise schedule with guidance 5 (`GuidedMixturePipeline`, the way SD pipelines guide) and as a
flow-matching model with Flux's scheduler protocol at mu = 1.15 with guidance 3.5 (`GuidedMixtureFlowPipeline`).
Calibration gets the ten digit prompts and the guidance scale as a user would pass them. Error: each N-step sample
against an accurate solution of the same guided ODE from the same noise and prompt (test noises never used in
calibration, prompts cycled over them), pooled RMSE, with the paired 95% CI against the best baseline.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from quality import (
    DEFAULT,
    HEDGED_VARIANT,
    NFES,
    SD_BETAS,
    benchmark_solvers,
    marked_cells,
    run_setup,
    runs_hedge_lines,
    schedule_table_lines,
    timed_log,
)

from diffusers_gits import GITSFlowMatchScheduler
from diffusers_gits.evaluation import TEST_SEED, per_sample_rmse
from diffusers_gits.noise import FLOW_PATH, SIGMA_PATH, shift_flow_sigmas
from diffusers_gits.schedules import baseline_schedules, flow_baseline_schedules
from diffusers_gits.solvers import sample
from diffusers_gits.testing.data import digits_images
from diffusers_gits.testing.gaussian_mixture import (
    ClassConditionalMixture,
    GuidedMixtureFlowPipeline,
    GuidedMixturePipeline,
)


PROMPTS = [str(digit) for digit in range(10)]
#: model -> (guidance scale, mu); VP guidance as SD users run it, flow guidance as Flux's default.
MODELS = {"vp": (5.0, None), "flow": (3.5, 1.15)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small run for checking the script; writes to /tmp")
    args = parser.parse_args()
    num_test, num_warmup, ref_steps = (60, 64, 200) if args.quick else (500, 256, 1000)
    out_dir = Path("/tmp/gits-guided-quick") if args.quick else Path(__file__).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = timed_log(start)
    model = ClassConditionalMixture.digits()
    real = digits_images("test", size=8).reshape(-1, 64)
    results = {"runs": {}}
    for name, (guidance, mu) in MODELS.items():
        log(f"{name}: guidance {guidance}" + (f", mu {mu}" if mu is not None else ""))
        results["runs"][name] = run(model, real, name, guidance, mu, num_test, num_warmup, ref_steps, log)
        results["setup"] = run_setup(start, num_test=num_test, num_warmup=num_warmup, reference_steps=ref_steps)
        (out_dir / "results_guided.json").write_text(json.dumps(results, indent=1))
        (out_dir / "RESULTS_GUIDED.md").write_text(render(results))
    log(f"wrote {out_dir / 'RESULTS_GUIDED.md'}")


def run(model, real, name, guidance, mu, num_test, num_warmup, ref_steps, log) -> dict:
    """Reference, calibrations and the error table for one model."""
    setup = guided_model(model, guidance, mu, [TEST_SEED + i for i in range(num_test)])
    solve, fine = setup["solve"], setup["fine"]
    reference = solve(fine(ref_steps), "ipndm")
    check = solve(fine(2 * ref_steps), "ipndm", 64)
    reference_error = float(per_sample_rmse(reference[:64], check).mean())
    log(f"reference: {ref_steps} steps, RMSE to {2 * ref_steps} steps on 64 noises {reference_error:.1e}")
    results = {"guidance_scale": guidance, "mu": mu, "reference_rmse_to_2x_steps": reference_error}
    results["solvers"], results["calibration_cost"] = benchmark_solvers(
        setup["pipe"],
        setup["baselines"],
        solve,
        reference,
        real,
        num_warmup,
        log,
        {DEFAULT: {}, **HEDGED_VARIANT},
        prompts=PROMPTS,
        guidance_scale=guidance,
    )
    return results


def guided_model(model: ClassConditionalMixture, guidance: float, mu: float | None, seeds: list[int]) -> dict:
    """The class-conditional mixture guided by `guidance`, as a flow model driven like Flux at `mu` or (`mu=None`) a
    VP model on SD's noise schedule, on the noises of generator `seeds` with the prompts cycled over them: its
    pipeline, `solve(sigmas, solver, rows=None)` from the first `rows` noises, the `fine(steps)` reference grid and
    the `baselines(N)` as the calibration sees them."""
    flow = mu is not None
    if flow:
        pipe = GuidedMixtureFlowPipeline(model, FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), mu=mu)
        factor = float(np.exp(mu))
        sigma_min = GITSFlowMatchScheduler.from_config(pipe.scheduler.config).train_sigma_min

        def fine(steps):  # the model's shifted uniform grid, down to 1e-4 before the last step
            return np.append(shift_flow_sigmas(np.linspace(1.0, 1e-4, steps), factor), 0.0)

        def baselines(k):  # as the calibration sees them: the pipeline passes Flux's sigmas and `mu`
            return flow_baseline_schedules(k, factor, sigma_min, dict(pipe.scheduler.config), mu, True)

    else:
        pipe = GuidedMixturePipeline(model, DDPMScheduler(**SD_BETAS))
        noise = pipe.noise

        def fine(steps):  # log-sigma down to sigma_min, then the final denoise every schedule ends with
            return np.append(np.geomspace(noise.sigma_max, noise.sigma_min, steps), 0.0)

        def baselines(k):
            return baseline_schedules(noise, k)

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(seeds))]
    z = pipe.start_noise([torch.Generator().manual_seed(seed) for seed in seeds])

    def solve(sigmas, solver, rows=None):  # the first `rows` noises (all by default) with their prompts
        x = z[:rows] if flow else z[:rows] * (1 + float(sigmas[0]) ** 2) ** 0.5  # VP noise at the first sigma
        denoiser = model.guided(prompts[:rows], guidance, flow=flow)
        return sample(denoiser, x, [float(s) for s in sigmas], solver, path=FLOW_PATH if flow else SIGMA_PATH)

    return {"pipe": pipe, "solve": solve, "fine": fine, "baselines": baselines}


HEADER = ["| model | solver | " + " | ".join(f"NFE {k}" for k in NFES) + " |", "|---|---|" + "---|" * len(NFES)]


def render(results: dict) -> str:
    setup = results["setup"]
    lines = [
        "# Guided sampling benchmark results",
        "",
        f"Written by `python benchmarks/guided_quality.py` (diffusers-gits {setup['package_version']}, torch "
        f"{setup['torch']}, Python {setup['python']}, {setup['machine']}; {setup['total_s'] / 60:.1f} min). Model: "
        "the exact class-conditional Gaussian KDE (bandwidth 0.25) of 1500 8x8 digits, prompted by digit, with "
        "classifier-free guidance: `vp` on SD's noise schedule at guidance 5 (the baselines: uniform timesteps, "
        "Karras, log-SNR, Align-Your-Steps SD1.5, the GITS authors' SD1.5 table), `flow` with Flux's scheduler "
        "protocol at mu 1.15 and guidance 3.5 (the baselines: uniform sigma, shifted, FlowMatchEuler's default, "
        f"beta, Karras, exponential, OSS Flux). {setup['num_test']} test noises never used in calibration, the ten "
        f"prompts cycled over them; calibration on {setup['num_warmup']} warm-up noises with the ten prompts and the "
        f"guidance scale, package defaults otherwise. Reference: {setup['reference_steps']}-step iPNDM of the guided "
        "ODE.",
        "",
        "## Headline: the package default vs the best baseline, pooled RMSE ratio",
        "",
        "Ratio < 1 means the default is closer to the reference; the brackets name what the calibration returned, "
        "and a cell is marked ! where the default is worse than the best baseline beyond the paired 95% CI of the "
        "per-noise difference in squared error (+ where it is better beyond it; unmarked where it returned that "
        "baseline, whose stored sigmas differ from the benchmark's by rounding).",
        "",
        *HEADER,
    ]
    for name, run_results in results["runs"].items():
        for solver, table in run_results["solvers"].items():
            cells = marked_cells(table, run_results["calibration_cost"][solver][DEFAULT]["chosen"])
            lines.append(f"| {name} | {solver} | " + " | ".join(cells) + " |")
    lines += runs_hedge_lines(results, HEADER)
    for name, run_results in results["runs"].items():
        lines += [
            "",
            f"## {name} (guidance {run_results['guidance_scale']}"
            + (f", mu {run_results['mu']}" if run_results["mu"] is not None else "")
            + ")",
            "",
            f"Reference RMSE to twice the steps (64 noises): {run_results['reference_rmse_to_2x_steps']:.1e}.",
            "",
            "### Error to reference: pooled RMSE / mean per-sample RMSE ± 95% CI",
            "",
        ]
        for solver, table in run_results["solvers"].items():
            lines += [f"#### {solver}", "", *schedule_table_lines(table, "rmse"), ""]
        lines += [
            "### Calibration cost (all five NFEs at once)",
            "",
            "| solver | wall s | teacher calls | search calls | race calls | total calls |",
            "|---|---|---|---|---|---|",
        ]
        for solver, costs in run_results["calibration_cost"].items():
            c = costs[DEFAULT]
            calls = c["model_calls"]
            lines.append(
                f"| {solver} | {c['wall_s']:.1f} | {calls.get('teacher', 0)} | {calls.get('search', 0)} | "
                f"{calls.get('selection', 0)} | {calls['total']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
