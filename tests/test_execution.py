"""The executor: jobs split over processes by cost, results in order, checkpointed; calibration over 1, 2 and 3 CPU
processes (gloo) gives the same schedules, and a checkpoint written by two processes resumes on three."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusers_gits.calibration.checkpoint import CalibrationCheckpoint
from diffusers_gits.calibration.execution import Executor, Job, Progress, _share, process_state


TESTS = Path(__file__).parent
WORKER = TESTS / "distributed_worker.py"


def test_jobs_are_shared_by_cost_each_once():
    costs = [120, 5, 5, 120, 5, 5, 5, 5]
    shares = _share(list(range(8)), costs, 2)
    assert sorted(i for share in shares for i in share) == list(range(8))
    loads = [sum(costs[i] for i in share) for share in shares]
    assert loads == [135, 135]  # equal contiguous counts would give one process both references (250 vs 20)
    assert _share([3, 4], [1, 1], 3) == [[3], [4], []]


def jobs(runs: list[str], count: int = 4) -> list[Job]:
    def run(i):
        runs.append(f"job {i}")
        return torch.full((2,), float(i))

    return [Job(f"job {i}", calls=10, samples=2, run=lambda i=i: run(i)) for i in range(count)]


def test_results_come_back_in_order_and_a_checkpoint_skips_done_jobs(tmp_path):
    runs = []
    checkpoint = CalibrationCheckpoint(tmp_path, {"settings": {"seed": 0}})
    results = Executor(process_state("cpu"), checkpoint).map("teacher", jobs(runs))
    assert [float(r[0]) for r in results] == [0, 1, 2, 3] and len(runs) == 4
    (tmp_path / "entries" / sorted(os.listdir(tmp_path / "entries"))[0]).write_bytes(b"torn")
    runs.clear()
    again = Executor(process_state("cpu"), CalibrationCheckpoint(tmp_path, {"settings": {"seed": 0}}))
    results = again.map("teacher", jobs(runs))
    assert [float(r[0]) for r in results] == [0, 1, 2, 3] and len(runs) == 1  # only the torn entry is redone


def test_repeated_job_keys_are_refused():
    with pytest.raises(ValueError, match="repeat"):
        Executor(process_state("cpu")).map("teacher", jobs([])[:1] * 2)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    sys.path.insert(0, str(TESTS))
    from distributed_worker import calibrate_all

    return calibrate_all()


def launch(command: list[str], output: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=output.parent)


def free_port() -> str:
    """A port nothing listens on: launches one after another must not wait for the last one's port to be freed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def torchrun(processes: int, *args: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    return [*launcher, "--master_port", free_port(), str(WORKER), *args]


def assert_same(single: dict, output: Path, processes: int) -> None:
    for rank in range(processes):
        theirs = json.loads(Path(f"{output}.{rank}").read_text())
        for name, mine in single.items():
            assert theirs[name]["chosen"] == mine["chosen"], (name, rank)
            assert theirs[name]["model_calls"] == mine["model_calls"], (name, rank)
            for k, sigmas in mine["sigmas"].items():
                torch.testing.assert_close(
                    torch.tensor(theirs[name]["sigmas"][k]), torch.tensor(sigmas), rtol=1e-6, atol=0
                )
    created = {json.loads(Path(f"{output}.{rank}").read_text())["embedded"]["created"] for rank in range(processes)}
    assert len(created) == 1  # the same config on every process, metadata included


def test_two_processes_calibrate_as_one_does(single_process, tmp_path):
    output = tmp_path / "two.json"
    result = launch(torchrun(2, str(output)), output)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same(single_process, output, 2)


def test_a_two_process_checkpoint_resumes_on_three_processes_exactly(single_process, tmp_path):
    output, checkpoint = tmp_path / "run.json", tmp_path / "checkpoint"
    killed = launch(torchrun(2, str(output), "--checkpoint-dir", str(checkpoint), "--stop-after", "12"), output)
    assert killed.returncode != 0 and not Path(f"{output}.0").exists()
    stored = len(os.listdir(checkpoint / "embedded" / "entries"))
    assert stored >= 12
    resumed = launch(torchrun(3, str(output), "--checkpoint-dir", str(checkpoint)), output)  # 50 warm-ups: uneven
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same(single_process, output, 3)


def test_cli_under_accelerate_launch_on_cpus(tmp_path):
    from diffusers_gits.embedded import embedded_model_path

    output = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(),
        "-m", "diffusers_gits", "calibrate",
        str(embedded_model_path("digits")), "--steps", "3", "--num-warmup", "24", "--batch-size", "8", "--device", "cpu",
        "--output", str(output), "--checkpoint-dir", str(tmp_path / "checkpoint"),
    ]  # fmt: skip
    result = launch(command, tmp_path / "log")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("steps: gits") == 1  # one process reports
    config = json.loads((output / "scheduler_config.json").read_text())
    record = json.loads((output / "calibration_report.json").read_text())
    assert record["num_warmup"] == 24 and sorted(config["gits_sigmas"]) == ["3"]
    assert (tmp_path / "checkpoint" / "manifest.json").is_file()


def test_a_calibration_that_stops_under_its_budget_shows_a_full_bar_when_done(capsys):
    bar = Progress(total_calls=100, enabled=True)
    bar.update("teacher", 30, 3)
    bar.update("search", 10, 1)
    bar.finish()
    bar.close()
    assert bar.bar.n == bar.bar.total == 40
    assert "GITS calibration done: 100%" in capsys.readouterr().err
