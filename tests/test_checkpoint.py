"""Checkpoints: an interrupted calibration resumes to exactly the uninterrupted schedules; a checkpoint of anything
else is refused, naming the difference; a torn one costs a warning, never the run."""

import json

import pytest
import torch
from diffusers import DDPMScheduler

from diffusers_gits import CheckpointMismatchError, GITSScheduler
from diffusers_gits.calibration.checkpoint import CalibrationCheckpoint
from diffusers_gits.calibration.recorder import PipelineRunner
from diffusers_gits.testing.gaussian_mixture import GaussianMixture, GaussianMixturePipeline


# clip_sample=False: DDPMScheduler clips x0 to [-1, 1] by default, and the exact mixture lives outside it.
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False}
SETTINGS = {"num_warmup": 48, "batch_size": 8, "grid_size": 13, "cache": False, "progress": False}


@pytest.fixture()
def pipe():
    return GaussianMixturePipeline(GaussianMixture.random(), DDPMScheduler(**SD))


@pytest.fixture()
def counted(monkeypatch):
    """Counts pipeline calls; `counted.stop_after = n` interrupts the n+1-th as Ctrl-C would."""
    run = PipelineRunner.run

    class Counter:
        calls = 0
        stop_after = None

    def spy(self, *args, **kwargs):
        if Counter.stop_after is not None and Counter.calls == Counter.stop_after:
            raise KeyboardInterrupt
        Counter.calls += 1
        return run(self, *args, **kwargs)

    monkeypatch.setattr(PipelineRunner, "run", spy)
    return Counter


def test_an_interrupted_calibration_resumes_exactly(pipe, counted, tmp_path):
    uninterrupted = GITSScheduler.from_calibration(pipe, [3, 5], **SETTINGS)
    full = counted.calls
    counted.calls, counted.stop_after = 0, full // 2
    with pytest.raises(KeyboardInterrupt):
        GITSScheduler.from_calibration(pipe, [3, 5], checkpoint_dir=tmp_path, **SETTINGS)
    counted.calls, counted.stop_after = 0, None
    resumed = GITSScheduler.from_calibration(pipe, [3, 5], checkpoint_dir=tmp_path, **SETTINGS)
    assert counted.calls == full - full // 2  # nothing done twice
    for k in (3, 5):
        assert resumed.sigmas_for(k) == uninterrupted.sigmas_for(k)
    ours, theirs = resumed.calibration_record, uninterrupted.calibration_record
    assert ours["report"] == theirs["report"] and ours["model_calls"] == theirs["model_calls"]

    counted.calls = 0
    GITSScheduler.from_calibration(pipe, [3, 5], checkpoint_dir=tmp_path, resume=False, **SETTINGS)
    assert counted.calls == full  # started over


def test_a_checkpoint_of_other_settings_or_another_model_is_refused_by_name(pipe, counted, tmp_path):
    GITSScheduler.from_calibration(pipe, [3], checkpoint_dir=tmp_path, **SETTINGS)
    counted.calls = 0
    with pytest.raises(CheckpointMismatchError, match="settings.num_warmup: checkpoint 48, now 40") as info:
        GITSScheduler.from_calibration(pipe, [3], checkpoint_dir=tmp_path, **{**SETTINGS, "num_warmup": 40})
    assert "resume=False" in str(info.value) and counted.calls == 0
    other = GaussianMixturePipeline(GaussianMixture.random(seed=1), DDPMScheduler(**SD))
    with pytest.raises(CheckpointMismatchError, match="model.components"):
        GITSScheduler.from_calibration(other, [3], checkpoint_dir=tmp_path, **SETTINGS)
    with pytest.raises(CheckpointMismatchError, match="settings.batch_size: checkpoint 8, now 16"):
        GITSScheduler.from_calibration(pipe, [3], checkpoint_dir=tmp_path, **{**SETTINGS, "batch_size": 16})


def test_another_package_version_is_refused(tmp_path):
    CalibrationCheckpoint(tmp_path, {"package_version": "0.0.9", "settings": {"seed": 0}}).load()
    with pytest.raises(CheckpointMismatchError, match='package_version: checkpoint "0.0.9", now "0.1.0"'):
        CalibrationCheckpoint(tmp_path, {"package_version": "0.1.0", "settings": {"seed": 0}}).load()


def test_a_torn_manifest_or_entry_costs_a_warning_and_a_fresh_start(tmp_path, caplog):
    identity = {"settings": {"seed": 0}}
    checkpoint = CalibrationCheckpoint(tmp_path, identity)
    checkpoint.load()
    checkpoint.store("teacher/noises 0-7 (8)", (torch.ones(3), torch.zeros(2)))
    checkpoint.store("teacher/noises 8-15 (8)", (torch.ones(3), torch.zeros(2)))
    (next((tmp_path / "entries").iterdir())).write_bytes(b"not a torch file")
    with caplog.at_level("WARNING", logger="diffusers_gits"):
        assert len(CalibrationCheckpoint(tmp_path, identity).load()) == 1
    assert "unreadable GITS checkpoint entry" in caplog.text
    (tmp_path / "manifest.json").write_text('{"settings": {"se')
    with caplog.at_level("WARNING", logger="diffusers_gits"):
        assert CalibrationCheckpoint(tmp_path, identity).load() == {}
    assert "starting over" in caplog.text
    assert json.loads((tmp_path / "manifest.json").read_text()) == identity


def test_results_round_trip_exactly(tmp_path):
    checkpoint = CalibrationCheckpoint(tmp_path, {"settings": {}})
    checkpoint.load()
    value = [torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 1, 8, 8)]
    checkpoint.store("search/layer 2/noises 0-3 (4)", value)
    loaded = CalibrationCheckpoint(tmp_path, {"settings": {}}).load()["search/layer 2/noises 0-3 (4)"]
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(loaded, value))
    assert [p.name for p in (tmp_path / "entries").iterdir() if p.name.startswith(".")] == []  # no temporaries left
