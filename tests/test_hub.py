"""Sharing schedules: real HTTP round trips through huggingface_hub against a local fake Hub, cache, presets."""

import functools
import json
import logging
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import huggingface_hub.errors
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffusers_gits import GITSScheduler, ScheduleLoadError
from diffusers_gits.cache import cache_load, cache_store
from diffusers_gits.model_card import list_schedules
from diffusers_gits.schedule_format import calibration_summary
from diffusers_gits.testing.gaussian_mixture import GaussianMixture, GaussianMixturePipeline


# clip_sample=False: DDPMScheduler clips x0 to [-1, 1] by default, and the exact mixture lives outside it.
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False}
#: The paper's search alone (no held-out race): these tests are about caching and sharing, not the search.
PURE_DP = {"jump_cost": "euler", "coeff": 1.0, "num_holdout": 0, "progress": False}
TINY_PURE_DP = {**PURE_DP, "num_warmup": 2, "batch_size": 2, "grid_size": 4}


def calibrated(table=None):
    meta = {"format_version": 1, "model": "org/base-model", "solver": "dpmpp_2m", "pipeline_class": "StableDiffusionPipeline",
            "pipe_kwargs": {"guidance_scale": 7.5}, "report": {"3": {"gits_error": 0.1, "default_error": 0.2, "chosen": "gits_coeff_1"}}}  # fmt: skip
    scheduler = GITSScheduler(
        **SD, gits_sigmas=table or {"3": [14.6, 2.0, 0.4, 0.0]}, calibration=calibration_summary(meta)
    )
    scheduler.calibration_record = meta
    return scheduler


def test_push_pull_round_trip_with_card_plot_and_listing(hub):
    scheduler = calibrated()
    url = scheduler.push_to_hub("me/sd15-gits", subfolder="sd15/512-cfg7.5")
    assert "/me/sd15-gits/commit/" in url
    calibrated({"4": [14.6, 3.0, 1.0, 0.3, 0.0]}).push_to_hub("me/sd15-gits", subfolder="sdxl/1024")
    loaded = GITSScheduler.from_pretrained("me/sd15-gits", subfolder="sd15/512-cfg7.5")
    assert (
        loaded.config.gits_sigmas == scheduler.config.gits_sigmas
        and loaded.calibration_report == scheduler.calibration_report
    )
    files = huggingface_hub.HfApi().list_repo_files("me/sd15-gits")
    assert {
        "sd15/512-cfg7.5/README.md",
        "sd15/512-cfg7.5/schedules.png",
        "sd15/512-cfg7.5/scheduler_config.json",
        "sd15/512-cfg7.5/calibration_report.json",
    } <= set(files)
    config = json.loads(
        open(huggingface_hub.hf_hub_download("me/sd15-gits", "scheduler_config.json", subfolder="sdxl/1024")).read()
    )
    assert "report" not in config["calibration"] and config["calibration"]["chosen"] == {"3": "gits_coeff_1"}
    card = huggingface_hub.hf_hub_download("me/sd15-gits", "README.md", subfolder="sd15/512-cfg7.5")
    text = open(card).read()
    assert (
        text.startswith("---\nlibrary_name: diffusers") and "- gits" in text and "base_model: org/base-model" in text
    )
    listing = list_schedules("me/sd15-gits")
    assert [(e["subfolder"], e["steps"]) for e in listing] == [("sd15/512-cfg7.5", [3]), ("sdxl/1024", [4])]


def test_revision_pins_an_earlier_push(hub):
    calibrated().push_to_hub("me/repo")
    first = hub.repos["me/repo"]["refs"]["main"]
    calibrated({"3": [14.6, 1.0, 0.2, 0.0]}).push_to_hub("me/repo")
    assert GITSScheduler.from_pretrained("me/repo", revision=first).config.gits_sigmas["3"][1] == 2.0
    assert GITSScheduler.from_pretrained("me/repo").config.gits_sigmas["3"][1] == 1.0
    with pytest.raises(ScheduleLoadError, match="me/repo.*not found on the Hub"):
        GITSScheduler.from_pretrained("me/repo", revision="no-such-branch")


@pytest.mark.parametrize("kind", ["500", "drop", "truncate"])
def test_download_faults_give_a_clear_error_and_no_corrupt_cache(hub, no_backoff, kind):
    calibrated().push_to_hub("me/repo", subfolder="a")
    for _ in range(12):  # more failures than the client's retries
        hub.inject("GET", r"/resolve/.*/a/scheduler_config.json", kind)
        if kind != "truncate":
            hub.inject("HEAD", r"/resolve/.*/a/scheduler_config.json", kind)
    with pytest.raises(ScheduleLoadError, match="me/repo") as info:
        GITSScheduler.from_pretrained("me/repo", subfolder="a")
    assert info.value.source.startswith("me/repo")
    hub.faults.clear()
    # The failed download left nothing that loads: the next try downloads again and gets the real file.
    assert GITSScheduler.from_pretrained("me/repo", subfolder="a").calibrated_steps == [3]


@pytest.mark.parametrize("kind", ["drop", "truncate"])
def test_one_broken_download_is_retried_intact(hub, no_backoff, kind):
    scheduler = calibrated()
    scheduler.push_to_hub("me/repo")
    hub.inject("GET", r"/resolve/.*/scheduler_config.json", kind)
    assert GITSScheduler.from_pretrained("me/repo").config.gits_sigmas == scheduler.config.gits_sigmas


def test_push_fault_is_reported(hub, no_backoff):
    for _ in range(12):
        hub.inject("POST", r"/commit/", "500")
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError, match="500"):
        calibrated().push_to_hub("me/repo")


def test_offline_mode_with_a_warm_cache(hub, monkeypatch):
    calibrated().push_to_hub("me/repo", subfolder="a")
    GITSScheduler.from_pretrained("me/repo", subfolder="a")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    before = len(hub.requests)
    assert GITSScheduler.from_pretrained("me/repo", subfolder="a").calibrated_steps == [3]
    assert len(hub.requests) == before
    with pytest.raises(ScheduleLoadError, match="not in the local cache"):
        GITSScheduler.from_pretrained("me/repo", subfolder="never-pulled")


@pytest.mark.parametrize(
    "edit,field",
    [
        ({"_class_name": "EulerDiscreteScheduler"}, "_class_name"),
        ({"gits_sigmas": {"3": [14.6, 2.0, 0.0]}}, "gits_sigmas"),
        ({"gits_sigmas": {"2": [14.6, 20.0, 0.0]}}, "gits_sigmas"),
        ({"calibration": {"format_version": 99}}, "calibration.format_version"),
        ({"calibration": {"model": "x"}}, "calibration.format_version"),
    ],
)
def test_invalid_schedules_name_the_repo_and_field(hub, tmp_path, edit, field):
    folder = tmp_path / "bad"
    calibrated().save_pretrained(folder)
    path = folder / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    api = huggingface_hub.HfApi()
    api.create_repo("me/bad")
    api.upload_folder(repo_id="me/bad", folder_path=folder)
    with pytest.raises(ScheduleLoadError) as info:
        GITSScheduler.from_pretrained("me/bad")
    assert info.value.field == field and "me/bad" in str(info.value)


def test_from_calibration_publishes_and_reuses_through_the_hub(hub, tmp_path, monkeypatch):
    pipe = GaussianMixturePipeline(GaussianMixture.random(), DDPMScheduler(**SD))
    options = {"num_warmup": 32, "batch_size": 16, "hub_repo": "me/cal", **PURE_DP}
    first = GITSScheduler.from_calibration(pipe, [3], push=True, **options)
    assert len(list_schedules("me/cal")) == 1
    monkeypatch.setenv("DIFFUSERS_GITS_CACHE", str(tmp_path / "fresh-cache"))  # another machine: empty local cache
    calls = []
    monkeypatch.setattr(GaussianMixturePipeline, "__call__", lambda self, **kw: calls.append(kw))
    second = GITSScheduler.from_calibration(pipe, [3], **options)
    assert calls == [] and second.sigmas_for(3) == first.sigmas_for(3)


def test_local_cache_hit_makes_no_model_call_and_key_tracks_settings(monkeypatch):
    pipe = GaussianMixturePipeline(GaussianMixture.random(), DDPMScheduler(**SD))
    options = {"num_warmup": 32, "batch_size": 16, **PURE_DP}
    first = GITSScheduler.from_calibration(pipe, [3], **options)
    original_call = GaussianMixturePipeline.__call__
    calls = []

    def spy(self, **kw):
        calls.append(kw)
        return original_call(self, **kw)

    monkeypatch.setattr(GaussianMixturePipeline, "__call__", spy)
    again = GITSScheduler.from_calibration(pipe, [3], **options)
    assert calls == [] and again.sigmas_for(3) == first.sigmas_for(3)
    pipe.scheduler = again  # the result installed on the pipe does not change the key
    assert GITSScheduler.from_calibration(pipe, [3], **options).sigmas_for(3) == first.sigmas_for(3) and calls == []
    GITSScheduler.from_calibration(pipe, [3], **{**options, "seed": 1})
    assert len(calls) > 0  # another seed is another calibration


def test_flow_calibration_is_cached_as_a_flow_scheduler_and_keyed_by_mu(monkeypatch):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from diffusers_gits import GITSFlowMatchScheduler
    from diffusers_gits.testing.gaussian_mixture import MixtureFlowPipeline

    mixture = GaussianMixture.random()
    pipe = MixtureFlowPipeline(mixture, FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), mu=0.5)
    options = {"num_warmup": 32, "batch_size": 16, **PURE_DP}
    first = GITSScheduler.from_calibration(pipe, [3], **options)
    calls = []
    denoiser = mixture.flow_denoiser
    monkeypatch.setattr(mixture, "flow_denoiser", lambda x, sigma: calls.append(sigma) or denoiser(x, sigma))
    pipe.scheduler = first  # installed: the key still comes from the same shift settings
    again = GITSScheduler.from_calibration(pipe, [3], **options)
    assert isinstance(again, GITSFlowMatchScheduler) and again.sigmas_for(3) == first.sigmas_for(3)
    assert calls == [] and again.calibration_mu == 0.5
    pipe.mu = 1.0  # another resolution: another shift, another calibration
    other = GITSScheduler.from_calibration(pipe, [3], **options)
    assert calls and other.calibration_mu == 1.0


def test_cache_writes_are_atomic(tmp_path, monkeypatch):
    scheduler = calibrated()

    from diffusers_gits import cache

    config = json.loads(scheduler.to_json_string())

    def killed(config, folder):
        (Path(folder) / "scheduler_config.json").write_text('{"_class_name": "GITSScheduler", "gits_sig')
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "write_config", killed)
    with pytest.raises(KeyboardInterrupt):
        cache_store("k1", config, cache_dir=tmp_path)
    monkeypatch.undo()
    assert cache_load("k1", tmp_path) is None and list(tmp_path.iterdir()) == []
    cache_store("k1", config, scheduler.calibration_record, cache_dir=tmp_path)
    loaded_config, record = cache_load("k1", tmp_path)
    assert loaded_config["gits_sigmas"] == scheduler.config.gits_sigmas and record == scheduler.calibration_record


def test_sd15_preset_needs_no_calibration_or_network():
    preset = GITSScheduler.from_preset("sd15", coeff=1.2)
    assert preset.calibrated_steps == list(range(2, 21))
    np.testing.assert_allclose(
        preset.sigmas_for(6)[:-1], [14.61464119, 5.85520077, 2.05039096, 0.95350921, 0.45573691, 0.17026083]
    )
    assert preset.sigmas_for(6)[-1] == 0
    preset.set_timesteps(25)  # stretched from the 20-step row, exactly 25 steps
    assert len(preset.timesteps) == 25
    with pytest.raises(ValueError, match=r"coeff in \[0.8, 0.85.*got coeff=1.12"):
        GITSScheduler.from_preset("sd15", coeff=1.12)
    with pytest.raises(ValueError, match="'sdxl'"):
        GITSScheduler.from_preset("sdxl")
    torch.manual_seed(0)


def test_check_pipeline_catches_family_and_prediction_mismatches(caplog):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sd15 = GITSScheduler.from_preset("sd15")
    sd_pipe = GaussianMixturePipeline(GaussianMixture.random(), DDPMScheduler(**SD))
    sd15.check_pipeline(sd_pipe)
    flow_pipe = GaussianMixturePipeline(GaussianMixture.random(), DDPMScheduler(**SD))
    flow_pipe.scheduler = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="flow-matching"):
        sd15.check_pipeline(flow_pipe)
    with pytest.raises(ValueError, match="v_prediction"):
        sd15.check_pipeline(
            GaussianMixturePipeline(GaussianMixture.random(), DDPMScheduler(**SD, prediction_type="v_prediction"))
        )
    with caplog.at_level("WARNING"):
        sd15.check_pipeline(
            GaussianMixturePipeline(GaussianMixture.random(), DDPMScheduler())
        )  # linear betas: another range
    assert "another model family" in caplog.text


def _ddpm_pipe(sample_size: int = 8):
    from diffusers import DDPMPipeline, UNet2DModel

    torch.manual_seed(0)  # the same weights whatever the config: sample_size changes no parameter shape
    unet = UNet2DModel(
        sample_size=sample_size, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**SD))


def test_cache_key_covers_component_configs_buffers_and_the_vae(tmp_path):
    from conftest import tiny_sd_pipe

    from diffusers_gits.cache import calibration_key, model_identity

    settings = {"steps": [3], "seed": 0}
    small, large = _ddpm_pipe(8), _ddpm_pipe(16)
    assert all(torch.equal(a, b) for a, b in zip(small.unet.parameters(), large.unet.parameters()))
    assert calibration_key(model_identity(small), settings) != calibration_key(model_identity(large), settings)

    key = calibration_key(model_identity(small), settings)
    small.unet.register_buffer("output_scale", torch.ones(1), persistent=False)
    with_buffer = calibration_key(model_identity(small), settings)
    assert with_buffer != key
    small.unet.output_scale.fill_(2.0)
    assert calibration_key(model_identity(small), settings) != with_buffer

    sd = tiny_sd_pipe(tmp_path)
    before = calibration_key(model_identity(sd), settings)
    sd.vae.register_to_config(scaling_factor=0.5)
    assert calibration_key(model_identity(sd), settings) != before


def test_cache_key_is_stable_across_loads_of_the_same_model(tmp_path):
    from diffusers import DDPMPipeline

    from diffusers_gits.cache import calibration_key, model_identity

    _ddpm_pipe().save_pretrained(tmp_path / "model")
    first, second = (DDPMPipeline.from_pretrained(tmp_path / "model") for _ in range(2))
    assert calibration_key(model_identity(first), {"seed": 0}) == calibration_key(model_identity(second), {"seed": 0})
    second.unet.conv_in.weight.data[0, 0, 0, 0] += 1e-3  # one weight that the strided sample may miss
    assert calibration_key(model_identity(first), {"seed": 0}) != calibration_key(model_identity(second), {"seed": 0})


def test_equal_weights_other_config_is_calibrated_afresh_and_hits_are_logged(tmp_path, monkeypatch, caplog):
    from diffusers import DDPMPipeline

    monkeypatch.setenv("DIFFUSERS_GITS_CACHE", str(tmp_path))

    calls = []
    original_call = DDPMPipeline.__call__

    @functools.wraps(original_call)  # the runner reads the signature: `batch_size` sets the noises per call
    def spy(self, *args, **kwargs):
        calls.append(self.unet.config.sample_size)
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(DDPMPipeline, "__call__", spy)
    small, large = _ddpm_pipe(8), _ddpm_pipe(16)
    GITSScheduler.from_calibration(small, [2], **TINY_PURE_DP)
    with caplog.at_level("WARNING", logger="diffusers_gits"):
        GITSScheduler.from_calibration(large, [2], **TINY_PURE_DP)
    assert calls == [8, 16] and "cached" not in caplog.text  # the second model ran: no hit
    with caplog.at_level("WARNING", logger="diffusers_gits"):
        GITSScheduler.from_calibration(large, [2], **TINY_PURE_DP)
    assert calls == [8, 16]
    assert "Using the cached GITS calibration" in caplog.text and "DDPMPipeline" in caplog.text
    assert "+00:00" in caplog.text  # the date it was made (UTC)


def test_a_corrupt_cache_entry_is_recalibrated_with_a_warning(tmp_path, monkeypatch, caplog):
    from diffusers_gits.cache import calibration_key, model_identity

    pipe = _ddpm_pipe()

    first = GITSScheduler.from_calibration(pipe, [2], cache_dir=tmp_path, **TINY_PURE_DP)
    (entry,) = [path for path in tmp_path.iterdir() if not path.name.startswith(".")]
    (entry / "scheduler_config.json").write_text('{"_class_name": "GITSSch')
    with caplog.at_level("WARNING", logger="diffusers_gits"):
        again = GITSScheduler.from_calibration(pipe, [2], cache_dir=tmp_path, **TINY_PURE_DP)
    assert "unusable GITS cache entry" in caplog.text
    assert again.sigmas_for(2) == first.sigmas_for(2)
    assert cache_load(entry.name, tmp_path) is not None  # replaced by the fresh result
    assert len(calibration_key(model_identity(pipe), {})) == 32


@pytest.mark.parametrize("make", [lambda: GITSScheduler(**SD), lambda: GITSScheduler.from_preset("sd15")])
def test_saving_without_a_record_removes_an_older_report(make, tmp_path):
    calibrated().save_pretrained(tmp_path)
    assert GITSScheduler.from_pretrained(tmp_path).calibration_report is not None
    make().save_pretrained(tmp_path)
    loaded = GITSScheduler.from_pretrained(tmp_path)
    assert loaded.calibration_record is None and loaded.calibration_report is None
    assert not (tmp_path / "calibration_report.json").exists()


@pytest.mark.parametrize(
    "scheduler_class, key, values",
    [
        ("CogVideoXDDIMScheduler", "snr_shift_scale", (1.0, 3.0)),
        ("FlowMatchEulerDiscreteScheduler", "shift_terminal", (None, 0.1)),
    ],
)
def test_model_identity_tells_noise_schedules_apart_by_every_key(scheduler_class, key, values):
    import diffusers
    from conftest import tiny_ddpm_pipe

    from diffusers_gits.cache import model_identity

    pipe = tiny_ddpm_pipe()
    identities = []
    for value in values:
        pipe.scheduler = getattr(diffusers, scheduler_class)(**{key: value})
        identities.append(model_identity(pipe)["noise_schedule"])
    assert identities[0] != identities[1]


def test_a_scheduler_from_the_hub_saves_offline(hub, tmp_path, monkeypatch):
    calibrated().push_to_hub("me/offline-save")
    loaded = GITSScheduler.from_pretrained("me/offline-save")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded.save_pretrained(tmp_path)  # the record came with from_pretrained: nothing to download now
    assert GITSScheduler.from_pretrained(tmp_path).calibration_report == calibrated().calibration_report


def test_a_hub_error_other_than_not_found_is_raised_not_taken_for_a_miss(hub, monkeypatch):
    import huggingface_hub as hf

    pipe = GaussianMixturePipeline(GaussianMixture.random(), DDPMScheduler(**SD))
    calls = []
    monkeypatch.setattr(GaussianMixturePipeline, "__call__", lambda self, **kw: calls.append(kw))

    def unreachable(*args, **kwargs):
        raise ConnectionError("the network is down")

    monkeypatch.setattr(hf, "hf_hub_download", unreachable)
    with pytest.raises(ScheduleLoadError, match="the network is down"):
        GITSScheduler.from_calibration(pipe, [3], hub_repo="me/cal", cache=False, **TINY_PURE_DP)
    assert calls == []  # no expensive calibration started on a look-up that failed


def test_a_schedule_not_on_the_hub_is_calibrated(hub):
    from diffusers_gits import ScheduleNotFoundError

    pipe = GaussianMixturePipeline(GaussianMixture.random(), DDPMScheduler(**SD))
    with pytest.raises(ScheduleNotFoundError):
        GITSScheduler.from_pretrained("me/never-pushed")
    scheduler = GITSScheduler.from_calibration(pipe, [3], hub_repo="me/never-pushed", cache=False, **TINY_PURE_DP)
    assert scheduler.calibrated_steps == [3]


def test_from_pretrained_returns_or_names_unknown_arguments_and_takes_every_download_option(tmp_path, hub, caplog):
    calibrated().save_pretrained(tmp_path)
    loaded, unused = GITSScheduler.from_pretrained(tmp_path, solvr="euler", solver="ipndm", return_unused_kwargs=True)
    assert unused == {"solvr": "euler"} and loaded.config.solver == "ipndm"
    with caplog.at_level(logging.WARNING):
        GITSScheduler.from_pretrained(tmp_path, solvr="euler")
    assert "solvr" in caplog.text and "misspelling" in caplog.text
    # Keys of the stock config the schedule was made from are kept in the file but are not the caller's arguments.
    made_from_pndm = GITSScheduler.from_config({**dict(calibrated().config), "skip_prk_steps": True})
    made_from_pndm.save_pretrained(tmp_path / "pndm")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, unused = GITSScheduler.from_pretrained(tmp_path / "pndm", solver="ipndm", return_unused_kwargs=True)
        GITSScheduler.from_pretrained(tmp_path / "pndm")
    assert unused == {} and "ignored" not in caplog.text
    # The download options reach huggingface_hub (a forced download of a pushed schedule works).
    calibrated().push_to_hub("me/forced")
    again = GITSScheduler.from_pretrained("me/forced", force_download=True, user_agent="tests", revision="main")
    assert again.calibration_report == calibrated().calibration_report
