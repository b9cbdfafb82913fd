"""Calibrates the embedded model and a tiny SD pipeline; run alone, or by `torchrun` as several processes.

`python distributed_worker.py OUT.json [--checkpoint-dir DIR] [--stop-after N]`: every process calibrates; each
writes what it got to `OUT.json.<rank>` (the tests check that every process ends with the same schedules).
`--stop-after N` kills the run (SystemExit) after the N-th pipeline call of this process, to test resuming.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from accelerate import PartialState

from diffusers_gits import GITSScheduler
from diffusers_gits.embedded import load_embedded_pipeline


#: An uneven split: 50 warm-ups in batches of 8 over 2 or 3 processes.
SETTINGS = {"num_warmup": 50, "batch_size": 8, "grid_size": 13, "cache": False, "progress": False}
CALLS = {"embedded": {}, "tiny_sd": {"prompts": ["a cat", "a dog"], "height": 32, "width": 32, "guidance_scale": 5.0}}


def pipelines() -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_sd_pipe

    return {"embedded": load_embedded_pipeline("digits"), "tiny_sd": tiny_sd_pipe(Path(tempfile.mkdtemp()))}


def calibrate_all(checkpoint_dir: str | None = None) -> dict:
    """Each pipeline's calibrated sigmas, choices and model calls."""
    results = {}
    for name, pipe in pipelines().items():
        folder = f"{checkpoint_dir}/{name}" if checkpoint_dir else None
        scheduler = GITSScheduler.from_calibration(pipe, [3, 4], checkpoint_dir=folder, **SETTINGS, **CALLS[name])
        meta = scheduler.calibration_record
        results[name] = {
            "sigmas": {str(k): scheduler.sigmas_for(k) for k in scheduler.calibrated_steps},
            "chosen": {k: entry["chosen"] for k, entry in meta["report"].items()},
            "model_calls": meta["model_calls"],
            "created": meta["created"],
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--stop-after", type=int)
    args = parser.parse_args()
    state = PartialState(cpu=True)
    torch.set_num_threads(1)
    if args.stop_after is not None:
        from diffusers_gits.calibration.recorder import PipelineRunner

        run, calls = PipelineRunner.run, []

        def stopping(self, *a, **k):
            if len(calls) == args.stop_after:
                raise SystemExit(3)
            calls.append(1)
            return run(self, *a, **k)

        PipelineRunner.run = stopping
    results = calibrate_all(args.checkpoint_dir)
    Path(f"{args.output}.{state.process_index}").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
