"""Benchmark: calibration quality against its cost, to choose the default `num_warmup` (the size of a calibration).

For each model and solver: calibrate GITS at each `num_warmup` (every other option the package default), counting
model calls per stage; then score every calibrated schedule and the model family's baselines on the same fresh noises
(and prompts) with `compare_schedules` (pooled RMSE to a fine iPNDM reference, noises no calibration used). The
curve is GITS's pooled RMSE over the best baseline's, per step count, against the calls the calibration made.

    python benchmarks/cost_curve.py --model digits --solvers dpmpp_2m unipc ipndm   # results_cost_digits_SOLVER.json
    python benchmarks/cost_curve.py --model flow_kde                                 # the exact flow KDE at mu 1.15
    python benchmarks/cost_curve.py --model sd --solvers dpmpp_2m                    # the embedded SD model, guided
    python benchmarks/cost_curve.py --model flow --solvers dpmpp_2m --warmups 16 32 64 128 --num-test 64
    python benchmarks/cost_curve.py --model flow --solvers dpmpp_2m --add-t2i  # + t2i_quality.py's run (256)
    python benchmarks/cost_curve.py --model sd --solvers unipc --warmups 512 1024 --num-test 64   # adds two sizes
    python benchmarks/cost_curve.py --report                                          # writes benchmarks/RESULTS_COST.md

A run adds its sizes to the curve already in `results_cost_MODEL_SOLVER.json` when that was scored on as many test
noises (checked: every baseline's RMSE must agree), and replaces the file otherwise.

`--add-t2i` takes the point at the package default from `t2i_quality.py`'s calibration of the same model and solver
instead of calibrating again: both score on the same 64 test noises and prompts (checked: every baseline's RMSE must
agree; on the SD-style model the two runs' 256-warm-up calibrations and scores are identical).

Models: `digits`, the embedded digits DDPM (unconditional, SD's noise schedule); `flow_kde`, the exact Gaussian KDE
of 8x8 digits as a flow model driven like Flux at mu = 1.15; `sd` and `flow`, the embedded text-to-image models with
prompts and classifier-free guidance, calibrated as the demo calibrates them.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_gits import GITSScheduler, compare_schedules
from diffusers_gits.demo import BASELINES, CALIBRATION_PROMPT_SEED, GITS, TEST_PROMPT_SEED, load_demo_pipeline
from diffusers_gits.embedded import load_embedded_pipeline
from diffusers_gits.shapes import prompts_grid
from diffusers_gits.testing.data import digits_images
from diffusers_gits.testing.gaussian_mixture import GaussianMixture, MixtureFlowPipeline


HERE = Path(__file__).resolve().parent
STEPS = [4, 5, 6, 8, 10]
WARMUPS = [16, 32, 64, 128, 256]
#: How far (in ratio to the best baseline) a cheaper calibration may trail the best one measured and still be chosen.
TOLERANCE = 0.03
#: Published wall time of one sampling step of one 1024x1024 image at batch size 1 (the whole pipeline call over its
#: steps, so text encoding and VAE decoding are spread over them), to turn call counts into expected GPU time. A model
#: call of calibration is one sample at one noise level, classifier-free guidance included as in these steps.
STEP_SECONDS = {
    "SDXL, A100 (30 steps with guidance in 3.70 s, stabilityai/stable-diffusion-xl-1.0-tensorrt model card, "
    "non-TensorRT baseline)": 3.704 / 30,
    "SDXL, H100 (2.50 s, same source)": 2.496 / 30,
    "Flux.1-dev, RTX 4090, fp16 (30 steps in 6.2 s, gigagpu.com's RTX 4090 FLUX.1-dev benchmark)": 6.2 / 30,
}
MODELS = {
    "digits": "the embedded digits DDPM (16x16, unconditional, SD's noise schedule)",
    "flow_kde": "the exact Gaussian KDE of 8x8 digits as a flow model, Flux's protocol at mu 1.15",
    "sd": "the embedded StableDiffusionPipeline, prompts, guidance 5",
    "flow": "the embedded StableDiffusion3Pipeline, prompts, guidance 5",
}


def load_model(model: str) -> tuple[object, dict, tuple[str, ...]]:
    """The pipeline, the keyword arguments of its calibration and comparison calls (prompts, guidance), and its
    baselines."""
    if model == "digits":
        return load_embedded_pipeline("digits"), {}, ("default", "uniform", "karras", "logsnr", "ays", "sd15")
    if model == "flow_kde":
        mixture = GaussianMixture.kde(digits_images("train", size=8), 0.25)
        pipe = MixtureFlowPipeline(mixture, FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), mu=1.15)
        return pipe, {}, ("default", "uniform", "beta", "karras", "exponential", "oss_flux")
    pipe, guidance = load_demo_pipeline(model)
    return pipe, {"guidance_scale": guidance}, BASELINES[model]


def run(model: str, solvers: list[str], warmups: list[int], num_test: int) -> None:
    pipe, kwargs, baselines = load_model(model)
    calibration_prompts = prompts_grid(64, CALIBRATION_PROMPT_SEED) if kwargs else None
    test_prompts = prompts_grid(num_test, TEST_PROMPT_SEED) if kwargs else None
    for solver in solvers:
        calibrations, names = {}, []
        with tempfile.TemporaryDirectory() as tmp:
            for num_warmup in warmups:
                tic = time.perf_counter()
                scheduler = GITSScheduler.from_calibration(
                    pipe, STEPS, prompts=calibration_prompts, num_warmup=num_warmup, solver=solver,
                    progress=False, cache=False, **kwargs,
                )  # fmt: skip
                record = scheduler.calibration_record
                calibrations[num_warmup] = {
                    "wall_s": time.perf_counter() - tic,
                    "model_calls": record["model_calls"],
                    "chosen": {str(k): record["report"][str(k)]["chosen"] for k in STEPS},
                }
                scheduler.save_pretrained(Path(tmp) / str(num_warmup))
                names.append(f"gits:{Path(tmp) / str(num_warmup)}")
                print(f"{model} {solver} num_warmup {num_warmup}: {record['model_calls']['total']} calls", flush=True)
            table = compare_schedules(
                pipe, STEPS, [*baselines, *names], prompts=test_prompts, solver=solver, num_noises=num_test, **kwargs
            )
        pooled = {name: {str(k): row[k]["pooled_rmse"] for k in STEPS} for name, row in table.items()}
        results = {
            "model": MODELS[model],
            "solver": solver,
            "steps": STEPS,
            "num_test": num_test,
            "torch_threads": torch.get_num_threads(),
            "baselines": {name: pooled[name] for name in baselines},
            "calibrations": {
                str(w): {**calibrations[w], "pooled_rmse": pooled[name]} for w, name in zip(warmups, names)
            },
        }
        path = HERE / f"results_cost_{model}_{solver}.json"
        if path.exists():  # the other sizes of the curve, scored on the same noises, stay
            earlier = json.loads(path.read_text())
            if earlier["num_test"] == num_test:
                same_test_noises(earlier, pooled, "this run")
                results = with_points(earlier, results["calibrations"])
        path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{model} {solver}: done", flush=True)


def same_test_noises(results: dict, pooled: dict[str, dict[str, float]], source: str) -> None:
    """Refuse `pooled` (`{schedule: {N: pooled RMSE}}`, from `source`) unless every baseline of the curve `results`
    scores the same there (to 1e-4 relative): the two were scored on the same test noises and prompts."""
    for name, row in results["baselines"].items():
        for k, value in row.items():
            theirs = pooled[name][k]
            if abs(theirs - value) > 1e-4 * value:
                raise ValueError(f"{name} at NFE {k}: {theirs} in {source}, {value} here; not the same test noises")


def with_points(results: dict, calibrations: dict) -> dict:
    """The curve `results` with the points `calibrations` (`{num_warmup: ...}`) added, in order of size."""
    merged = {**results["calibrations"], **calibrations}
    return {**results, "calibrations": dict(sorted(merged.items(), key=lambda item: int(item[0])))}


def add_t2i_point(model: str, solver: str) -> None:
    """Add the calibration `t2i_quality.py` made of `model` with `solver` (at the package default `num_warmup`) to
    this curve as one more point, without calibrating again: both score on the same test noises and prompts, which is
    checked (every baseline's pooled RMSE must agree to 1e-4 relative) before the point is added."""
    path = HERE / f"results_cost_{model}_{solver}.json"
    results = json.loads(path.read_text())
    source = f"results_t2i_{model}_{solver}.json"
    t2i = json.loads((HERE / source).read_text())
    if t2i["num_test"] != results["num_test"]:
        raise ValueError(f"{source} scored {t2i['num_test']} test noises, this curve {results['num_test']}")
    pooled = {name: {k: cell["pooled_rmse"] for k, cell in row.items()} for name, row in t2i["rmse"].items()}
    same_test_noises(results, pooled, source)
    point = {
        "wall_s": t2i["calibration_seconds"],
        "model_calls": t2i["model_calls"],
        "chosen": t2i["chosen"],
        "pooled_rmse": {k: pooled[GITS][k] for k in map(str, results["steps"])},
        "from": source,
    }
    path.write_text(json.dumps(with_points(results, {str(t2i["num_warmup"]): point}), indent=1) + "\n")


def ratios(results: dict) -> dict[str, dict[str, float]]:
    """`{num_warmup: {N: GITS pooled RMSE / the best baseline's}}`."""
    best = {str(k): min(row[str(k)] for row in results["baselines"].values()) for k in results["steps"]}
    return {w: {k: c["pooled_rmse"][k] / best[k] for k in best} for w, c in results["calibrations"].items()}


def cheapest_within_tolerance(results: dict) -> str:
    """The smallest num_warmup whose ratio at every N is within `TOLERANCE` of the best ratio measured there, or
    "none" where no calibration is."""
    r = ratios(results)
    best = {k: min(row[k] for row in r.values()) for k in next(iter(r.values()))}
    within = [w for w, row in r.items() if all(row[k] <= best[k] + TOLERANCE for k in row)]
    return min(within, key=int) if within else "none"


def summary_lines(runs: list[dict]) -> list[str]:
    """One row per model and solver: the mean ratio over the NFEs and the worst, per num_warmup."""
    warmups = sorted({w for results in runs for w in results["calibrations"]}, key=int)
    lines = [
        "Summary: mean ratio over the NFEs (worst NFE in parentheses), per `num_warmup`:",
        "",
        "| model | solver | " + " | ".join(f"{w} warm-ups" for w in warmups) + " |",
        "|---|---|" + "---|" * len(warmups),
    ]
    for results in runs:
        r = ratios(results)
        cells = [
            f"{sum(r[w].values()) / len(r[w]):.2f} ({max(r[w].values()):.2f})" if w in r else "-" for w in warmups
        ]
        lines.append(f"| {results['model']} | {results['solver']} | " + " | ".join(cells) + " |")
    return lines


def wall_time_lines(runs: list[dict]) -> list[str]:
    """Expected GPU time of a calibration per `num_warmup` (its most model calls over the runs) from `STEP_SECONDS`."""
    calls = {}
    for results in runs:
        for w, c in results["calibrations"].items():
            calls[w] = max(calls.get(w, 0), c["model_calls"]["total"])
    warmups = sorted(calls, key=int)
    lines = [
        "Expected wall time of a calibration on a GPU, from its model calls (the most over the runs above; the count "
        "depends on `num_warmup` and the step counts, not on the model) and published per-step times at batch size 1 "
        "(no GPU was lent to measure them here; calibration batches noises, so these are upper bounds):",
        "",
        "| setup | " + " | ".join(f"{w} warm-ups ({calls[w]:,} calls)" for w in warmups) + " |",
        "|---|" + "---|" * len(warmups),
    ]
    for setup, seconds in STEP_SECONDS.items():
        lines.append(f"| {setup} | " + " | ".join(f"{calls[w] * seconds / 60:.0f} min" for w in warmups) + " |")
    return lines


def report() -> None:
    files = sorted(HERE.glob("results_cost_*.json"))
    lines = [
        "# Calibration quality against cost",
        "",
        "Made by `benchmarks/cost_curve.py` (see its docstring); raw numbers in `results_cost_MODEL_SOLVER.json`. Each "
        "row is one calibration at that `num_warmup` (every other option the package default); the cells are GITS's "
        "pooled RMSE over the best baseline's at that NFE, all scored on the same fresh noises (and prompts) against a "
        "fine iPNDM reference. Calls: model calls of the whole calibration by stage (teacher, search, race) and "
        "in all, and as a multiple of one teacher run over the same warm-ups. *Cheapest within "
        f"{TOLERANCE}*: the smallest `num_warmup` whose ratio at every NFE is within {TOLERANCE} of the best ratio "
        "measured at that NFE; *worst*: the highest ratio over the NFEs.",
    ]
    runs = [json.loads(path.read_text()) for path in files]
    lines += ["", *summary_lines(runs), "", *wall_time_lines(runs)]
    for results in runs:
        r = ratios(results)
        lines += [
            "",
            f"## {results['model']}: {results['solver']} ({results['num_test']} test noises)",
            "",
            "| num_warmup | teacher / search / race calls | total (x teacher run) | wall s | "
            + " | ".join(f"NFE {k}" for k in results["steps"])
            + " | worst |",
            "|---|---|---|---|" + "---|" * (len(results["steps"]) + 1),
        ]
        for w, c in results["calibrations"].items():
            cells = [f"{r[w][str(k)]:.2f}" + ("" if c["chosen"][str(k)] == "gits" else "*") for k in results["steps"]]
            calls = c["model_calls"]
            source = f" (from `{c['from']}`)" if "from" in c else ""
            lines.append(
                f"| {w}{source} | {calls['teacher']} / {calls['search']} / {calls['selection']} | {calls['total']} "
                f"({calls['teacher_equivalents']:.2f}x) | {c['wall_s']:.0f} | "
                + " | ".join(cells)
                + f" | {max(r[w].values()):.2f} |"
            )
        lines += [
            "",
            f"Cheapest within {TOLERANCE}: num_warmup {cheapest_within_tolerance(results)}. "
            "(* the calibration returned a baseline there.)",
        ]
    (HERE / "RESULTS_COST.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS))
    parser.add_argument("--solvers", nargs="+", default=["dpmpp_2m", "unipc", "ipndm"])
    parser.add_argument("--warmups", nargs="+", type=int, default=WARMUPS)
    parser.add_argument("--num-test", type=int, default=128)
    parser.add_argument(
        "--add-t2i",
        action="store_true",
        help="add t2i_quality.py's calibration of --model with each solver to its curve (same test noises)",
    )
    parser.add_argument("--report", action="store_true", help="write RESULTS_COST.md from the JSON files")
    args = parser.parse_args()
    if args.report:
        report()
        return
    if args.model is None:
        parser.error("--model is required unless --report")
    if args.add_t2i:
        for solver in args.solvers:
            add_t2i_point(args.model, solver)
        report()
        return
    run(args.model, args.solvers, args.warmups, args.num_test)
    report()


if __name__ == "__main__":
    main()
