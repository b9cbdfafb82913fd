"""GITSFlowMatchScheduler: FlowMatchEuler's contract, its sigmas / mu policy, and its errors."""

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_gits import GITSFlowMatchScheduler, GITSScheduler
from diffusers_gits.model_card import model_card
from diffusers_gits.noise import shift_flow_sigmas, unshift_flow_sigmas


TABLE = {"3": [1.0, 0.8, 0.45, 0.0], "5": [1.0, 0.9, 0.7, 0.45, 0.2, 0.0]}


def make(**kwargs):
    options = {"use_dynamic_shifting": True, "gits_sigmas": TABLE, "calibration": {"format_version": 1, "mu": 0.7}}
    return GITSFlowMatchScheduler(**{**options, **kwargs})


def full_loop(scheduler, num_steps=5, mu=0.7):
    scheduler.set_timesteps(num_steps, mu=mu)
    sample = torch.randn(2, 16, 4, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        velocity = torch.cos(sample * (1 + float(t) / 1000))
        sample = scheduler.step(velocity, t, sample).prev_sample
    return sample


@pytest.mark.parametrize("solver", ["euler", "ipndm", "dpmpp_2m", "unipc"])
def test_save_load_round_trip_gives_identical_steps(tmp_path, solver):
    scheduler = make(solver=solver)
    scheduler.save_pretrained(tmp_path)
    loaded = GITSScheduler.from_pretrained(tmp_path)  # the class named in the file, whichever GITS class loads it
    assert type(loaded) is GITSFlowMatchScheduler and loaded.calibration_mu == 0.7
    torch.testing.assert_close(full_loop(loaded), full_loop(scheduler), rtol=0, atol=0)
    json.loads((tmp_path / "scheduler_config.json").read_text())


def test_euler_solver_is_flowmatch_euler_on_the_same_sigmas():
    ours = make(solver="euler")
    stock = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    stock.set_timesteps(sigmas=ours.sigmas_for(5), mu=0.7)
    ours.set_timesteps(5, mu=0.7)
    torch.testing.assert_close(stock.sigmas, ours.sigmas)
    sample = torch.randn(2, 16, 4, generator=torch.Generator().manual_seed(1))
    a, b = sample.clone(), sample.clone()
    for t_ours, t_stock in zip(ours.timesteps, stock.timesteps):
        velocity = torch.sin(a)
        a = ours.step(velocity, t_ours, a).prev_sample
        b = stock.step(velocity, t_stock, b).prev_sample
    torch.testing.assert_close(a, b)


def test_step_returns_the_x0_estimate_and_honours_return_dict():
    scheduler = make(solver="euler")
    scheduler.set_timesteps(3, mu=0.7)
    sample, velocity = torch.randn(1, 4, 2), torch.randn(1, 4, 2)
    prev, x0 = scheduler.step(velocity, scheduler.timesteps[1], sample, return_dict=False)
    torch.testing.assert_close(x0, sample - 0.8 * velocity)  # begin index from the timestep: sigma 0.8
    torch.testing.assert_close(prev, sample + (0.45 - 0.8) * velocity)


def test_scale_noise_interpolates_towards_noise():
    scheduler = make()
    sample, noise = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    noisy = scheduler.scale_noise(sample, torch.tensor([250.0, 250.0]), noise)
    torch.testing.assert_close(noisy, 0.75 * sample + 0.25 * noise)


def test_uncalibrated_counts_fall_back_with_one_warning(caplog):
    scheduler = make()
    with caplog.at_level(logging.WARNING, logger="diffusers_gits"):
        scheduler.set_timesteps(4, mu=0.7)
        scheduler.set_timesteps(4, mu=0.7)
    assert caplog.text.count("stretched log-linearly") == 1
    assert len(scheduler.timesteps) == 4 and scheduler.sigmas[0] == 1.0 and scheduler.sigmas[-1] == 0.0


def test_static_shift_export_round_trips_through_the_shift():
    scheduler = make(use_dynamic_shifting=False, shift=3.0, calibration=None)
    exported = scheduler.sigmas_for(5)
    np.testing.assert_allclose(shift_flow_sigmas(exported, 3.0), scheduler.schedule_for(5)[:-1])
    np.testing.assert_allclose(unshift_flow_sigmas(shift_flow_sigmas([0.3, 0.7], 3.0), 3.0), [0.3, 0.7])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({}, ValueError, "num_inference_steps"),
        ({"num_inference_steps": 3, "sigmas": [1.0, 0.5]}, ValueError, "must match"),
        ({"sigmas": [1.0, 0.5], "timesteps": [1000.0, 500.0, 100.0]}, ValueError, "must match"),
        ({"sigmas": [1.0, 1.2]}, ValueError, r"\(0, 1\]"),
        ({"sigmas": [1.0, 0.0]}, ValueError, r"\(0, 1\]"),
        ({"timesteps": [1500.0, 500.0]}, ValueError, r"\(0, 1\]"),
        ({"num_inference_steps": 4.5}, TypeError, "int"),
        ({"num_inference_steps": 3, "eta": 0.1}, TypeError, "eta"),
    ],
)
def test_set_timesteps_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        make().set_timesteps(**kwargs)


def test_dynamic_shifting_needs_mu_only_where_it_shifts():
    scheduler = make()
    scheduler.set_timesteps(3)  # calibrated: sampled at the calibration's own mu
    np.testing.assert_allclose(scheduler.sigmas.numpy(), TABLE["3"], rtol=1e-6)
    with pytest.raises(ValueError, match="mu"):
        GITSFlowMatchScheduler(use_dynamic_shifting=True).set_timesteps(3)
    with pytest.raises(ValueError, match="mu"):
        scheduler.set_timesteps(sigmas=[1.0, 0.6, 0.3])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"time_shift_type": "cubic"}, "time_shift_type"),
        ({"shift": 0.0}, "shift"),
        ({"gits_sigmas": {"2": [1.5, 0.5, 0.0]}}, r"\[0, 1\]"),
        ({"solver": "heun"}, "heun"),
    ],
)
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_vp_configs_and_inverted_sigmas_are_refused():
    from diffusers import DDIMScheduler

    with pytest.raises(ValueError, match="use GITSScheduler"):
        GITSFlowMatchScheduler.from_config(DDIMScheduler().config)
    with pytest.raises(ValueError, match="invert_sigmas"):
        GITSFlowMatchScheduler.from_config(FlowMatchEulerDiscreteScheduler(invert_sigmas=True).config)


def test_model_card_names_the_flow_class_and_its_mu():
    card = model_card(json.loads(make().to_json_string()), "me/flux-gits")
    assert "GITSFlowMatchScheduler.from_pretrained" in card and "flow sigmas" in card and "| mu | `0.7` |" in card


@pytest.mark.parametrize(
    "name, config, mu",
    [
        ("oss_flux", {}, 1.15),
        ("oss_flux", {}, 0.6),  # another resolution: the table is still sampled as given
        ("oss_wan", {}, None),
        ("oss_wan", {"shift": 5.0}, None),  # a Wan config's own shift
    ],
)
def test_oss_presets_sample_the_table_and_export_onto_it(name, config, mu):
    """Every N samples the OSS table stretched by ComfyUI's rule; `sigmas_for` passed to a stock FlowMatchEuler with
    the same settings lands on the same sigmas, and Euler through both gives the same sample."""
    from diffusers_gits.schedules import load_published_tables

    preset = GITSFlowMatchScheduler.from_preset(name, **config)
    key = {"oss_flux": "flux_flow_sigmas_10", "oss_wan": "wan_flow_sigmas_20"}[name]
    table = load_published_tables()["oss"][key]
    steps = len(table) - 1
    np.testing.assert_allclose(preset.schedule_for(steps, mu), table[:-1] + [0.0], rtol=1e-12)
    assert preset.calibrated_steps == list(range(2, 21)) and len(preset.schedule_for(30, mu)) == 31
    assert preset.config.solver == "euler" and preset.config.calibration["table_shift"] > 1

    stock_config = {k: preset.config[k] for k in ("shift", "use_dynamic_shifting", "base_shift", "max_shift")}
    for n in (4, steps, 25):
        stock = FlowMatchEulerDiscreteScheduler(**stock_config)
        stock.set_timesteps(sigmas=preset.sigmas_for(n, mu), mu=mu)
        np.testing.assert_allclose(stock.sigmas.numpy(), preset.schedule_for(n, mu), atol=1e-6)
    default_sigmas = np.linspace(1.0, 1.0 / steps, steps)  # what Flux passes: GITS replaces it by the table
    preset.set_timesteps(sigmas=default_sigmas, mu=mu)
    np.testing.assert_allclose(preset.timesteps.numpy(), np.asarray(table[:-1]) * 1000, rtol=1e-6)

    stock = FlowMatchEulerDiscreteScheduler(**stock_config)
    stock.set_timesteps(sigmas=preset.sigmas_for(steps, mu), mu=mu)
    preset.set_timesteps(steps, mu=mu)
    finals = []
    for scheduler in (preset, stock):
        sample = torch.randn(2, 16, 4, generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            sample = scheduler.step(torch.cos(sample * (1 + float(t) / 1000)), t, sample).prev_sample
        finals.append(sample)
    torch.testing.assert_close(finals[0], finals[1], rtol=0, atol=2e-5)


def test_presets_name_the_class_that_has_them():
    with pytest.raises(ValueError, match="GITSScheduler.from_preset"):
        GITSFlowMatchScheduler.from_preset("sd15")
    with pytest.raises(ValueError, match="GITSFlowMatchScheduler.from_preset"):
        GITSScheduler.from_preset("oss_flux")
    with pytest.raises(TypeError, match="gits_sigmas"):
        GITSFlowMatchScheduler.from_preset("oss_flux", gits_sigmas={"2": [1.0, 0.5, 0.0]})


@pytest.mark.parametrize("shift, dynamic, mu", [(3.0, False, None), (1.0, True, 0.6)])
@pytest.mark.parametrize(
    "arguments",
    [
        {"timesteps": [980.0, 700.0, 420.0, 150.0]},  # alone: given to the model, the sigmas t / T shifted
        {"sigmas": [1.0, 0.7, 0.4, 0.15], "timesteps": [999.0, 700.0, 400.0, 100.0]},  # both: each as given
    ],
)
def test_sigmas_and_timesteps_mean_what_flowmatch_euler_makes_of_them(shift, dynamic, mu, arguments):
    config = {"shift": shift, "use_dynamic_shifting": dynamic, "time_shift_type": "linear"}
    ours = GITSFlowMatchScheduler(**config, solver="euler", replace_default_sigmas=False)
    stock = FlowMatchEulerDiscreteScheduler(**config)
    ours.set_timesteps(mu=mu, **arguments)
    stock.set_timesteps(mu=mu, **arguments)
    np.testing.assert_allclose(ours.sigmas.numpy(), stock.sigmas.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.timesteps.numpy(), stock.timesteps.numpy(), atol=1e-3)


def test_cogview4_default_pair_selects_the_calibrated_schedule_with_unshifted_model_timesteps(caplog):
    """CogView4 passes timesteps linspace(T, 1, N) rounded down and sigmas = timesteps / T, for a linear dynamic shift;
    its model sees the unshifted time. A calibrated scheduler samples its own schedule and keeps that convention."""
    config = {"use_dynamic_shifting": True, "time_shift_type": "linear", "base_shift": 0.25, "max_shift": 0.75}
    scheduler = GITSFlowMatchScheduler(**config, gits_sigmas=TABLE, calibration={"format_version": 1, "mu": 0.5})
    timesteps = np.linspace(1000, 1.0, 5).astype(np.int64).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        scheduler.set_timesteps(5, timesteps=timesteps, sigmas=timesteps / 1000, mu=0.5)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), TABLE["5"], atol=1e-6)
    unshifted = unshift_flow_sigmas(np.asarray(TABLE["5"][:-1]), scheduler.shift_factor(0.5))
    np.testing.assert_allclose(scheduler.timesteps.numpy(), unshifted * 1000, rtol=1e-5)
    assert "CogView4" in caplog.text
    # Other pairs are sampled as given.
    scheduler.set_timesteps(timesteps=[999.0, 500.0, 100.0], sigmas=[1.0, 0.5, 0.1], mu=0.5)
    np.testing.assert_allclose(scheduler.timesteps.numpy(), [999.0, 500.0, 100.0])


@pytest.mark.parametrize("num_steps", [3, 5])
def test_export_to_wans_unipc_with_flow_sigmas_samples_the_same_latents(num_steps):
    """`UniPCMultistepScheduler(use_flow_sigmas=True)` re-shifts custom sigmas by its flow_shift, as FlowMatchEuler does
    by its shift: `sigmas_for(N)` given to it samples what GITS's UniPC samples. (Two stock conventions differ from
    GITS and are left out here: it truncates the model's timesteps to integers, and it moves a first sigma of exactly
    1 to 1 - 1e-6, which makes its second step second order from pure noise; see docs/api.md.)"""
    from diffusers import UniPCMultistepScheduler

    wan = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0}
    ours = GITSFlowMatchScheduler.from_config(
        {**UniPCMultistepScheduler(**wan).config}, solver="unipc",
        gits_sigmas={"3": [0.98, 0.8, 0.45, 0.0], "5": [0.98, 0.9, 0.7, 0.45, 0.2, 0.0]},
    )  # fmt: skip
    assert ours.config.shift == 3.0
    stock = UniPCMultistepScheduler(**wan)
    stock.set_timesteps(sigmas=np.asarray(ours.sigmas_for(num_steps)))  # UniPC multiplies it: a list fails
    ours.set_timesteps(num_steps)
    np.testing.assert_allclose(stock.sigmas.numpy(), ours.sigmas.numpy(), atol=2e-6)
    finals = []
    for scheduler in (ours, stock):
        sample = torch.randn(2, 16, 4, generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            sample = scheduler.step(torch.cos(1.3 * sample), t, sample).prev_sample
        finals.append(sample)
    torch.testing.assert_close(finals[0], finals[1], rtol=0, atol=1e-5)


def test_flow_prediction_without_flow_sigmas_is_refused_by_both_classes():
    from diffusers import UniPCMultistepScheduler

    config = UniPCMultistepScheduler(prediction_type="flow_prediction").config
    with pytest.raises(ValueError, match="use_flow_sigmas"):
        GITSScheduler.from_config(config)
    with pytest.raises(ValueError, match="use_flow_sigmas"):
        GITSFlowMatchScheduler.from_config({**config, "use_flow_sigmas": True, "prediction_type": "epsilon"})
