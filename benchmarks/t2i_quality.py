"""Benchmark: GITS against the schedules people use, on the embedded text-to-image models, with guidance.

For each solver: calibrate GITS on the model with prompts and classifier-free guidance (cost counted), then on fresh
noises and prompts (never seen in calibration) score GITS and every baseline of the model's family by pooled RMSE to
a fine reference (`compare_schedules`: iPNDM on the calibration grid with every interval halved), with the paired
95% CI of GITS's difference in squared error to the best baseline; then generate images through
`pipe(prompts, num_inference_steps=N, guidance_scale=...)` with every schedule and the pipeline's stock scheduler and
score prompt adherence and the sliced Wasserstein distance to real images of the same prompts.

    python benchmarks/t2i_quality.py --model sd --solvers dpmpp_2m unipc    # benchmarks/results_t2i_sd_SOLVER.json
    python benchmarks/t2i_quality.py --model flow --solvers dpmpp_2m        # benchmarks/results_t2i_flow_SOLVER.json
    python benchmarks/t2i_quality.py --report                                 # writes benchmarks/RESULTS_T2I.md
"""

import argparse
import json
import time
from pathlib import Path

import torch

from diffusers_gits.demo import (
    BASELINES,
    GITS,
    TEST_PROMPT_SEED,
    calibrate_with_prompts,
    compare_with_baselines,
    generate_and_score,
    load_demo_pipeline,
    schedulers_to_compare,
)
from diffusers_gits.shapes import prompts_grid


HERE = Path(__file__).resolve().parent
STEPS = [4, 5, 6, 8, 10]


def run(model: str, solvers: list[str], num_warmup: int, num_test: int, num_images: int, hedge: float = 0.0) -> None:
    """Benchmark each solver on `model`; each solver's results go to `results_t2i_{model}_{solver}.json` (with
    `hedge`: `..._hedge.json`), so solvers can run in parallel processes."""
    pipe, guidance = load_demo_pipeline(model)
    stock = pipe.scheduler
    for solver in solvers:
        tic = time.perf_counter()
        scheduler = calibrate_with_prompts(pipe, STEPS, solver, num_warmup, guidance, hedge=hedge)
        seconds = time.perf_counter() - tic
        name = f"{model}_{solver}" + ("_hedge" if hedge else "")
        folder = HERE / "build" / f"t2i_{name}"
        scheduler.save_pretrained(folder)
        print(f"{model} {solver}: calibrated in {seconds:.0f} s", flush=True)

        test_prompts = prompts_grid(num_test, TEST_PROMPT_SEED)
        table = compare_with_baselines(pipe, model, STEPS, solver, folder, test_prompts, guidance)
        print(f"{model} {solver}: compared", flush=True)

        schedulers = schedulers_to_compare(pipe, stock, scheduler, BASELINES[model], STEPS, solver, guidance)
        adherence, distance, _ = generate_and_score(
            pipe, schedulers, STEPS, prompts_grid(num_images, TEST_PROMPT_SEED + 1), 0, guidance, 50
        )
        record = scheduler.calibration_record
        results = {
            "model": type(pipe).__name__,
            "guidance_scale": guidance,
            "steps": STEPS,
            "solver": solver,
            "torch_threads": torch.get_num_threads(),
            "num_warmup": num_warmup,
            "hedge": hedge,
            "num_test": num_test,
            "num_images": num_images,
            "calibration_seconds": seconds,
            "model_calls": record["model_calls"],
            "chosen": {str(k): record["report"][str(k)]["chosen"] for k in STEPS},
            # What the calibration saw: the closest baseline on its held-out noises and every screened schedule's
            # pooled RMSE on the search noises (TORS among them).
            "calibration_report": {
                str(k): {
                    key: record["report"][str(k)].get(key)
                    for key in ("closest_baseline", "search_noise_pooled_rmse", "summary")
                }
                for k in STEPS
            },
            "rmse": {name: {str(k): row[k] for k in STEPS} for name, row in table.items()},
            "adherence": {name: {str(k): v for k, v in row.items()} for name, row in adherence.items()},
            "distance_to_real": {name: {str(k): v for k, v in row.items()} for name, row in distance.items()},
        }
        (HERE / f"results_t2i_{name}.json").write_text(json.dumps(results, indent=1) + "\n")
        print(f"{model} {solver}: done", flush=True)


def gits_versus_best(rmse: dict, k: str) -> tuple[str, float, float, float | None]:
    """(best baseline, GITS pooled RMSE / best baseline's, paired mean difference in squared error GITS - best,
    its 95% half-width), from `compare_schedules`' table, whose differences are to the overall best (the half-width
    is `None` where a file records none: the overall best was a row it does not keep)."""
    baselines = {name: row[k] for name, row in rmse.items() if name != GITS}
    best = min(baselines, key=lambda name: baselines[name]["pooled_rmse"])
    gits = rmse[GITS][k]
    ratio = gits["pooled_rmse"] / baselines[best]["pooled_rmse"]
    if gits["minus_best"] == 0:  # GITS is the overall best: the best baseline's gap to it, with the sign turned
        return best, ratio, -baselines[best]["minus_best"], baselines[best]["minus_best_ci"]
    return best, ratio, gits["minus_best"] - baselines[best]["minus_best"], gits["minus_best_ci"]


def ratio_cell(ratio: float, diff: float, ci: float | None) -> str:
    """The ratio, in bold where the paired CI excludes zero; no CI where the comparison's best row was a schedule
    not shown (every difference is to it)."""
    return f"**{ratio:.2f}**" if ci is not None and abs(diff) > ci else f"{ratio:.2f}"


def run_title(r: dict) -> str:
    """The solver of a run, and its `hedge` where it calibrated with one."""
    return f"{r['solver']} with hedge={r['hedge']}" if r.get("hedge") else r["solver"]


def summary_lines(runs: list[dict]) -> list[str]:
    """One row per model and solver: GITS's ratio to the best baseline at each NFE, and which baseline that was."""
    steps = runs[0]["steps"]
    lines = [
        "## Summary: GITS over the best baseline (pooled RMSE; bold where the paired 95% CI excludes zero)",
        "",
        "| model | solver | " + " | ".join(f"NFE {k}" for k in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for r in runs:
        cells = []
        for k in map(str, steps):
            best, ratio, diff, ci = gits_versus_best(r["rmse"], k)
            cells.append(f"{ratio_cell(ratio, diff, ci)} (vs {best})")
        lines.append(f"| {r['model']} | {run_title(r)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def report() -> None:
    lines = ["# Text-to-image benchmark: the embedded shapes models with guidance", ""]
    lines += [
        "Made by `benchmarks/t2i_quality.py` (see its docstring for the method); raw numbers in "
        "`results_t2i_MODEL_SOLVER.json`. Pooled RMSE is in latent space, to a fine iPNDM "
        "reference from the same noise and prompt; *ratio* is GITS over the best baseline at that NFE, with the "
        "paired difference in squared error (GITS minus best, x1e-4) and its 95% CI; the ratio is in bold where "
        "that CI excludes zero. Adherence: share of "
        "generated images that show the prompt's shape, colour and background (read exactly, "
        "`diffusers_gits.shapes`); SW: sliced Wasserstein distance of the images to real images of the same "
        "prompts (pixels in [0, 1]; lower is better).",
        "",
    ]
    by_model = {
        model: [json.loads(path.read_text()) for path in sorted(HERE.glob(f"results_t2i_{model}_*.json"))]
        for model in ("sd", "flow")
    }
    lines += summary_lines([r for runs in by_model.values() for r in runs])
    for runs in by_model.values():
        if not runs:
            continue
        lines += [f"## {runs[0]['model']} (guidance {runs[0]['guidance_scale']})", ""]
        for r in runs:
            calls = r["model_calls"]
            lines += [
                f"### {run_title(r)}: calibration {calls['total']} model calls ({calls['teacher_equivalents']}x one "
                f"teacher run, num_warmup {r['num_warmup']}), {r['calibration_seconds']:.0f} s on {r['torch_threads']} CPU "
                f"thread(s) of a shared 2-core machine; "
                f"{r['num_test']} test noises, {r['num_images']} images for adherence and SW",
                "",
                "| NFE | best baseline | its RMSE | GITS RMSE | ratio | GITS - best (x1e-4, 95% CI) | adherence GITS / "
                "best baseline / stock / 50-step ref | SW GITS / best baseline / stock |",
                "|---|---|---|---|---|---|---|---|",
            ]
            stock = next(name for name in r["adherence"] if name.startswith("stock"))
            reference = next(name for name in r["adherence"] if name.startswith("reference"))
            for k in map(str, r["steps"]):
                best, ratio, diff, ci = gits_versus_best(r["rmse"], k)
                a, d = r["adherence"], r["distance_to_real"]
                interval = "n/a" if ci is None else f"{ci * 1e4:.1f}"
                lines.append(
                    f"| {k} | {best} | {r['rmse'][best][k]['pooled_rmse']:.4f} | {r['rmse'][GITS][k]['pooled_rmse']:.4f}"
                    f" | {ratio_cell(ratio, diff, ci)} | {diff * 1e4:+.1f} ± {interval} | {a[GITS][k]:.2f} / {a[best][k]:.2f} / "
                    f"{a[stock][k]:.2f} / {a[reference][k]:.2f} | {d[GITS][k]:.3f} / {d[best][k]:.3f} / "
                    f"{d[stock][k]:.3f} |"
                )
            lines += ["", "Pooled RMSE of every schedule:", ""]
            names = list(r["rmse"])
            lines += ["| NFE | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
            for k in map(str, r["steps"]):
                lines.append(f"| {k} | " + " | ".join(f"{r['rmse'][n][k]['pooled_rmse']:.4f}" for n in names) + " |")
            lines.append("")
            if "hedged" in r:
                lines += hedged_lines(r)
            if "calibration_report" in r:
                lines += calibration_view_lines(r)
    (HERE / "RESULTS_T2I.md").write_text("\n".join(lines))


def hedged_lines(r: dict) -> list[str]:
    """What `calibrate(hedge=...)` returns from this calibration's own race (`r["hedged"]`: its unconfirmed cells'
    searched schedule moved toward the race's best baseline), scored in the same comparison as the rows above."""
    hedged = r["hedged"]
    toward = ", ".join(
        f"NFE {k} toward {name}" for k, name in sorted(hedged["toward"].items(), key=lambda i: int(i[0]))
    )
    cells = []
    for k in map(str, r["steps"]):
        best, *_ = gits_versus_best(r["rmse"], k)
        cells.append(f"{hedged['rmse'][k]['pooled_rmse'] / r['rmse'][best][k]['pooled_rmse']:.2f}")
    return [
        f"With `hedge={hedged['weight']}` (no model call: the same race, its unconfirmed cells moved part of the way "
        f"toward the race's best baseline: {toward}), scored in the same comparison: pooled RMSE "
        + " / ".join(f"{hedged['rmse'][k]['pooled_rmse']:.4f}" for k in map(str, r["steps"]))
        + ", ratio to the best baseline "
        + " / ".join(cells)
        + " at NFE "
        + " / ".join(map(str, r["steps"]))
        + ".",
        "",
    ]


def calibration_view_lines(r: dict) -> list[str]:
    """What the calibration itself saw: pooled RMSE on its search noises of the searched schedule, TORS and the best
    baseline, and its verdict."""
    lines = [
        "What the calibration saw on its own search noises (pooled RMSE; TORS is screened like a baseline at no model "
        "call), and its verdict:",
        "",
        "| NFE | searched | TORS | best baseline | verdict |",
        "|---|---|---|---|---|",
    ]
    for k, entry in r["calibration_report"].items():
        errors = entry["search_noise_pooled_rmse"]
        best = min((name for name in errors if name not in ("gits", "tors")), key=errors.get)
        lines.append(
            f"| {k} | {errors['gits']:.4f} | {errors['tors']:.4f} | {best} {errors[best]:.4f} | {entry['summary']} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["sd", "flow"])
    parser.add_argument("--solvers", nargs="+", default=["dpmpp_2m", "unipc", "ipndm", "euler"])
    parser.add_argument("--num-warmup", type=int, default=256)
    parser.add_argument("--num-test", type=int, default=64)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument(
        "--hedge", type=float, default=0.0, help="calibrate with this `hedge` (results_..._hedge.json)"
    )
    parser.add_argument("--report", action="store_true", help="write RESULTS_T2I.md from the JSON files")
    args = parser.parse_args()
    if args.report:
        report()
        return
    if args.model is None:
        parser.error("--model is required unless --report")
    run(args.model, args.solvers, args.num_warmup, args.num_test, args.num_images, args.hedge)
    report()


if __name__ == "__main__":
    main()
