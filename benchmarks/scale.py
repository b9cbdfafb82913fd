"""Scale benchmark of calibration: memory against num_warmup, processes, resume; writes RESULTS_SCALE.md / .json.

    python benchmarks/scale.py          # the embedded digits DDPM, about 15 minutes on 2 CPU cores

- Memory: peak RSS of a process that loads the embedded model and calibrates it, num_warmup 64 vs 512 at batch size
  16, for the default search and for the paper's teacher-priced cost (whose teacher runs over 3/4 of the warm-ups).
- Processes: wall time of the same calibration on 1 process and on 2 (`torchrun`, gloo), as a ratio, and whether the
  schedules are equal. On this 2-core CPU machine both runs share the same two cores (1 process x 2 threads vs 2 x 1),
  so the ratio measures the overhead of splitting, not a GPU speed-up.
- Resume: wall time of rerunning a finished calibration on its checkpoint, as a ratio to the calibration itself.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffusers_gits import GITSScheduler, __version__
from diffusers_gits.embedded import load_embedded_pipeline


HERE = Path(__file__).parent
STEPS = [4, 5, 6, 8, 10]


def child(args) -> None:
    """One calibration in this process; prints a JSON line (rank 0 only)."""
    from accelerate import PartialState

    state = PartialState(cpu=True)
    pipe = load_embedded_pipeline("digits")
    kwargs = {"jump_cost": "euler"} if args.jump_cost == "euler" else {}
    tic = time.perf_counter()
    scheduler = GITSScheduler.from_calibration(
        pipe, STEPS, num_warmup=args.num_warmup, batch_size=16, cache=False, progress=False,
        checkpoint_dir=args.checkpoint_dir, **kwargs,
    )  # fmt: skip
    seconds = time.perf_counter() - tic
    if state.is_main_process:
        meta = scheduler.calibration_record
        print(json.dumps({
            "seconds": seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "model_calls": meta["model_calls"]["total"],
            "sigmas": {str(k): scheduler.sigmas_for(k) for k in STEPS},
        }))  # fmt: skip


def run(command: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def calibration(num_warmup: int, jump_cost: str = "student", processes: int = 1, checkpoint: str | None = None):
    launcher = [sys.executable]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command = [*launcher, __file__, "--child", "--num-warmup", str(num_warmup), "--jump-cost", jump_cost]
    return run(command + (["--checkpoint-dir", checkpoint] if checkpoint else []))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--num-warmup", type=int, default=128)
    parser.add_argument("--jump-cost", default="student")
    parser.add_argument("--checkpoint-dir")
    args = parser.parse_args()
    if args.child:
        return child(args)

    results = {"memory": {}, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    for jump_cost in ("student", "euler"):
        for num_warmup in (64, 512):
            row = calibration(num_warmup, jump_cost)
            results["memory"][f"{jump_cost}/{num_warmup}"] = {
                k: row[k] for k in ("peak_rss_mib", "seconds", "model_calls")
            }
            print(jump_cost, num_warmup, results["memory"][f"{jump_cost}/{num_warmup}"], flush=True)

    one, two = calibration(128), calibration(128, processes=2)
    results["processes"] = {
        "one_s": one["seconds"], "two_s": two["seconds"], "two_over_one": two["seconds"] / one["seconds"],
        "same_schedules": one["sigmas"] == two["sigmas"],
    }  # fmt: skip
    print(results["processes"], flush=True)

    with tempfile.TemporaryDirectory() as folder:
        fresh = calibration(128, checkpoint=folder)
        resumed = calibration(128, checkpoint=folder)
    results["resume"] = {
        "fresh_s": fresh["seconds"], "rerun_s": resumed["seconds"], "rerun_over_fresh": resumed["seconds"] / fresh["seconds"],
        "same_schedules": fresh["sigmas"] == resumed["sigmas"] == one["sigmas"],
    }  # fmt: skip
    print(results["resume"], flush=True)
    results.update(package_version=__version__, torch=torch.__version__, date=time.strftime("%Y-%m-%d"))
    (HERE / "results_scale.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "RESULTS_SCALE.md").write_text(report(results))


def report(results: dict) -> str:
    memory = results["memory"]
    lines = [
        "# Calibration at scale (embedded digits DDPM, steps 4/5/6/8/10, batch size 16)",
        "",
        f"diffusers-gits {results['package_version']}, torch {results['torch']}, {results['machine']}, "
        f"{results['date']}. Written by `python benchmarks/scale.py`.",
        "",
        "## Peak memory (RSS of the calibrating process, model loaded) against num_warmup",
        "",
        "| search | num_warmup 64 | num_warmup 512 | ratio | model calls 64 / 512 |",
        "|---|---|---|---|---|",
    ]
    for jump_cost, label in (("student", "default (student path)"), ("euler", "paper (teacher-priced, euler)")):
        small, large = memory[f"{jump_cost}/64"], memory[f"{jump_cost}/512"]
        lines.append(
            f"| {label} | {small['peak_rss_mib']:.0f} MiB | {large['peak_rss_mib']:.0f} MiB | "
            f"{large['peak_rss_mib'] / small['peak_rss_mib']:.2f} | {small['model_calls']} / {large['model_calls']} |"
        )
    p, r = results["processes"], results["resume"]
    lines += [
        "",
        "## Processes and resume (num_warmup 128)",
        "",
        "| run | wall time | ratio | schedules equal to one process |",
        "|---|---|---|---|",
        f"| 1 process | {p['one_s']:.1f} s | 1.00 | - |",
        f"| 2 processes (torchrun, gloo, same 2 cores) | {p['two_s']:.1f} s | {p['two_over_one']:.2f} | "
        f"{p['same_schedules']} |",
        f"| fresh run with a checkpoint | {r['fresh_s']:.1f} s | 1.00 | {r['same_schedules']} |",
        f"| rerun on the finished checkpoint | {r['rerun_s']:.1f} s | {r['rerun_over_fresh']:.2f} | "
        f"{r['same_schedules']} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
