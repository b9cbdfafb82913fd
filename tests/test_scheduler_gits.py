"""The scheduler contract diffusers' own scheduler tests check, plus GITS-specific behaviour."""

import inspect
import io
import json
import logging

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from diffusers_gits import GITSScheduler, GITSSchedulerOutput


SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
TABLE = {"3": [14.6146, 2.0, 0.4, 0.0], "5": [14.6146, 4.0, 1.5, 0.6, 0.15, 0.0]}


def make(**kwargs):
    return GITSScheduler(**{**SD, "gits_sigmas": TABLE, **kwargs})


def dummy_model(sample, t):
    return torch.sin(sample * (1 + float(t) / 1000)) * 0.5


def full_loop(scheduler, num_steps=5, seed=0):
    scheduler.set_timesteps(num_steps)
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        sample = scheduler.step(dummy_model(scheduler.scale_model_input(sample, t), t), t, sample).prev_sample
    return sample


@pytest.mark.parametrize("solver", ["euler", "ipndm", "dpmpp_2m", "unipc"])
def test_save_load_round_trip_gives_identical_steps(tmp_path, solver):
    scheduler = make(solver=solver, calibration={"format_version": 1, "solver": solver})
    scheduler.calibration_record = {"format_version": 1, "solver": solver, "report": {"5": {"gits_error": 0.1}}}
    scheduler.save_pretrained(tmp_path)
    loaded = GITSScheduler.from_pretrained(tmp_path)
    assert loaded.config.gits_sigmas == TABLE and loaded.calibration_report == {"5": {"gits_error": 0.1}}
    torch.testing.assert_close(full_loop(loaded), full_loop(scheduler), rtol=0, atol=0)
    json.loads((tmp_path / "scheduler_config.json").read_text())


@pytest.mark.parametrize(
    "stock",
    [EulerDiscreteScheduler, DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler, UniPCMultistepScheduler],
)
def test_from_config_swaps_both_ways(stock):
    original = stock(**SD, prediction_type="v_prediction")
    gits = GITSScheduler.from_config(original.config)
    assert gits.config.beta_schedule == "scaled_linear" and gits.config.prediction_type == "v_prediction"
    back = stock.from_config(make().config)
    assert back.config.beta_end == 0.012
    again = GITSScheduler.from_config(back.config)
    assert again.config.gits_sigmas == TABLE  # hidden keys survive the round trip, as diffusers promises


def test_trained_betas_round_trip(tmp_path):
    scheduler = GITSScheduler(trained_betas=np.linspace(1e-4, 0.02, 1000))
    scheduler.save_pretrained(tmp_path)
    loaded = GITSScheduler.from_pretrained(tmp_path)
    np.testing.assert_allclose(loaded.alphas_cumprod.numpy(), scheduler.alphas_cumprod.numpy())


def test_tuple_and_dict_outputs_match_and_shapes():
    a, b = make(), make()
    a.set_timesteps(5)
    b.set_timesteps(5)
    sample = torch.randn(2, 3, 8, 8)
    for t in a.timesteps[:2]:
        out = a.step(dummy_model(sample, t), t, sample)
        tup = b.step(dummy_model(sample, t), t, sample, return_dict=False)
        assert isinstance(out, GITSSchedulerOutput) and isinstance(tup, tuple)
        torch.testing.assert_close(out.prev_sample, tup[0])
        torch.testing.assert_close(out.pred_original_sample, tup[1])
        assert out.prev_sample.shape == sample.shape
        sample = out.prev_sample


def test_public_api_and_pipeline_signatures():
    scheduler = make()
    assert scheduler.init_noise_sigma == 1.0 and scheduler.order == 1
    sample = torch.randn(1, 4, 8, 8)
    assert scheduler.scale_model_input(sample, 0.0) is sample
    step_params = inspect.signature(scheduler.step).parameters
    assert "generator" in step_params and "eta" not in step_params
    params = inspect.signature(scheduler.set_timesteps).parameters
    assert {"num_inference_steps", "device", "timesteps", "sigmas"} <= set(params)
    assert "EulerDiscreteScheduler" in GITSScheduler._compatibles
    assert len(scheduler) == 1000


def test_calibrated_uncalibrated_and_interpolated_step_counts(caplog):
    scheduler = make()
    scheduler.set_timesteps(5)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), TABLE["5"], rtol=1e-6)
    assert len(scheduler.timesteps) == 5 and scheduler.timesteps.dtype == torch.float32
    with caplog.at_level(logging.WARNING):
        scheduler.set_timesteps(7)
    assert "no schedule calibrated for 7 steps" in caplog.text and "5-step" in caplog.text
    assert len(scheduler.timesteps) == 7 and len(scheduler.sigmas) == 8
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        GITSScheduler(**SD).set_timesteps(4)
    assert "not calibrated" in caplog.text


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 9, 20, 50])
def test_every_step_count_gives_exactly_n_steps(n):
    scheduler = make()
    scheduler.set_timesteps(n)
    assert len(scheduler.timesteps) == n and len(scheduler.sigmas) == n + 1
    assert torch.all(scheduler.sigmas[:-1] > scheduler.sigmas[1:]) and scheduler.sigmas[-1] == 0
    assert len(torch.unique(scheduler.timesteps)) == n


def test_custom_sigmas_and_timesteps_reproduce():
    scheduler = make()
    reference = full_loop(scheduler, 5)
    custom = make()
    custom.set_timesteps(sigmas=scheduler.sigmas.tolist())
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in custom.timesteps:
        sample = custom.step(dummy_model(sample, t), t, sample).prev_sample
    torch.testing.assert_close(sample, reference, rtol=1e-5, atol=1e-5)
    by_t = make()
    by_t.set_timesteps(timesteps=[999, 600, 300, 50])
    assert by_t.num_inference_steps == 4 and by_t.sigmas[-1] == 0
    torch.testing.assert_close(by_t.timesteps, torch.tensor([999.0, 600, 300, 50]))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({}, ValueError, "exactly one"),
        ({"num_inference_steps": 3, "sigmas": [2.0, 0.0]}, ValueError, "exactly one"),
        ({"num_inference_steps": 0}, ValueError, ">= 1"),
        ({"num_inference_steps": 2.5}, TypeError, "int"),
        ({"sigmas": [1.0, 2.0, 0.0]}, ValueError, "strictly decreasing"),
        ({"sigmas": [2.0, float("nan"), 0.0]}, ValueError, "finite"),
        ({"timesteps": [100, 500]}, ValueError, "strictly decreasing"),
        ({"timesteps": [1200, 500]}, ValueError, r"\[0, 999\]"),
        ({"num_inference_steps": 4, "mu": 0.5}, ValueError, "flow-matching"),
        ({"num_inference_steps": 4, "shift": 3.0}, TypeError, "shift"),
    ],
)
def test_set_timesteps_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        make().set_timesteps(**kwargs)


@pytest.mark.parametrize(
    "table,match",
    [
        ({"3": [14.0, 2.0, 0.0]}, "must hold 4 sigmas"),
        ({"2": [14.0, 15.0, 0.0]}, "strictly decreasing"),
        ({"2": [14.0, 1.0, -0.5]}, "non-negative"),
        ({"2": [14.0, 1.0, 0.5]}, "end in 0"),
        ({"two": [14.0, 1.0, 0.0]}, "step counts"),
        ({"0": [0.0]}, ">= 1"),
    ],
)
def test_corrupted_tables_are_rejected_on_load(tmp_path, table, match):
    make().save_pretrained(tmp_path)
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "gits_sigmas": table}))
    with pytest.raises(ValueError, match=match):
        GITSScheduler.from_pretrained(tmp_path)


def test_unknown_solver_and_prediction_type():
    with pytest.raises(ValueError, match="'heun'"):
        make(solver="heun")
    with pytest.raises(ValueError, match="'flow'"):
        make(prediction_type="flow")
    with pytest.raises(ValueError, match="'middle'"):
        make(timestep_spacing="middle")


def test_step_before_set_timesteps_and_too_many_steps():
    scheduler = make()
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(torch.zeros(1), 999.0, torch.zeros(1))
    scheduler.set_timesteps(3)
    sample = torch.zeros(1)
    for t in scheduler.timesteps:
        sample = scheduler.step(torch.zeros(1), t, sample).prev_sample
    with pytest.raises(ValueError, match="3-step"):
        scheduler.step(torch.zeros(1), scheduler.timesteps[-1], sample)


def test_begin_index_and_add_noise_for_img2img():
    scheduler = make()
    scheduler.set_timesteps(5)
    x0, noise = torch.randn(2, 4), torch.randn(2, 4)
    t = scheduler.timesteps[2:3]
    noisy = scheduler.add_noise(x0, noise, t)
    sigma = float(scheduler.sigmas[2])
    torch.testing.assert_close(noisy, (x0 + sigma * noise) / (1 + sigma**2) ** 0.5)
    scheduler.set_begin_index(2)
    scheduler.step(torch.zeros(2, 4), scheduler.timesteps[2], noisy)
    assert scheduler.step_index == 3


def test_euler_solver_matches_stock_euler_with_exported_sigmas():
    """GITS euler on its schedule = EulerDiscreteScheduler on sigmas_for(N): the export is faithful."""
    gits = make(solver="euler")
    euler = EulerDiscreteScheduler(**SD)
    euler.set_timesteps(sigmas=gits.sigmas_for(5))
    gits.set_timesteps(5)
    torch.testing.assert_close(gits.timesteps, euler.timesteps, rtol=1e-4, atol=1e-2)
    noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = noise * gits.init_noise_sigma
    b = noise * (1 + float(euler.sigmas[0]) ** 2) ** 0.5  # the same state in Euler's sigma-space convention
    for t_a, t_b in zip(gits.timesteps, euler.timesteps):
        a = gits.step(dummy_model(a, t_a), t_a, a).prev_sample
        b = euler.step(dummy_model(euler.scale_model_input(b, t_b), t_b), t_b, b).prev_sample
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_integer_timesteps_export_for_dpm_solver():
    timesteps = make().timesteps_for(5)
    assert all(isinstance(t, int) for t in timesteps) and len(set(timesteps)) == 5
    dpm = DPMSolverMultistepScheduler(**SD)
    dpm.set_timesteps(timesteps=timesteps)
    assert dpm.timesteps.tolist() == timesteps
    crowded = GITSScheduler(**SD, gits_sigmas={"2": [14.6, 14.59, 0.0]})
    with pytest.raises(ValueError, match="closer than one timestep"):
        crowded.timesteps_for(2)


def test_a_round_trip_through_every_compatible_scheduler_keeps_every_setting():
    """diffusers' `test_compatibles`: GITS -> a compatible stock config -> GITS changes nothing (DDPM and DDIM clip by
    default, so an unclipped GITS config must say so explicitly)."""
    import diffusers

    original = GITSScheduler(**SD, clip_sample=False, solver="unipc", gits_sigmas=TABLE)
    public = {k: v for k, v in original.config.items() if not k.startswith("_")}
    for name in GITSScheduler._compatibles:
        try:
            stock = getattr(diffusers, name).from_config(original.config)
        except ImportError:  # a scheduler needing an optional package (torchsde)
            continue
        back = GITSScheduler.from_config(stock.config)
        changed = {k: (v, back.config[k]) for k, v in public.items() if back.config[k] != v}
        assert not changed, f"{name}: {changed}"


def test_learned_variance_channels_are_dropped_as_ddpm_drops_them():
    """DeepFloyd IF / Kandinsky ship DDPM with variance_type="learned_range": their pipelines leave the variance
    channels in the model output for such a config, and the step must use the prediction channels only."""
    from diffusers import DDPMScheduler

    config = DDPMScheduler(**SD, variance_type="learned_range").config
    outputs = []
    for with_variance in (True, False):
        scheduler = GITSScheduler.from_config(config, gits_sigmas=TABLE)
        scheduler.set_timesteps(3)
        sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            prediction = dummy_model(sample, t)
            variance = torch.full_like(prediction, 7.0)
            output = torch.cat([prediction, variance], 1) if with_variance else prediction
            sample = scheduler.step(output, t, sample).prev_sample
        outputs.append(sample)
    assert outputs[0].shape == (2, 3, 8, 8)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_a_stock_scheduler_built_from_a_gits_config_warns_in_one_short_line():
    """diffusers names the config values a stock scheduler does not expect; the schedule table is named, not printed."""
    preset = GITSScheduler.from_preset("sd15")  # 19 schedules
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    diffusers_logger = logging.getLogger("diffusers.configuration_utils")  # diffusers' loggers do not propagate
    diffusers_logger.addHandler(handler)
    try:
        EulerDiscreteScheduler.from_config(preset.config)
    finally:
        diffusers_logger.removeHandler(handler)
    text = stream.getvalue()
    assert "<GITS schedules for 2, 3," in text and "14.6146" not in text and len(text) < 1000
    assert json.loads(preset.to_json_string())["gits_sigmas"]["6"][1] == pytest.approx(5.85520077)  # JSON has it all
    assert preset.config.gits_sigmas == {str(k): preset.config.gits_sigmas[str(k)] for k in range(2, 21)}
