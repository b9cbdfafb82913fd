"""The diffusers scheduler contract, as diffusers' own SchedulerCommonTest and a careful review check it: betas,
x0 clipping, attribute probing, the stock-solver fallback, device-safe statistics."""

import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from diffusers_gits import GITSFlowMatchScheduler, GITSScheduler
from diffusers_gits.calibration.search import JumpCostAccumulator, SolverJumpCostAccumulator
from diffusers_gits.schedules import published_gits_sd15


SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@pytest.mark.parametrize(
    "config", [{}, SD, {"beta_schedule": "squaredcos_cap_v2"}, {**SD, "rescale_betas_zero_snr": True}]
)
def test_betas_and_alphas_are_diffusers(config):
    ours, theirs = GITSScheduler(**config), DDPMScheduler(**config)
    # float64 here, float32 in diffusers: the zero-SNR rescaling differs by up to 2e-4 relative.
    torch.testing.assert_close(ours.betas, theirs.betas, rtol=5e-4, atol=1e-7)
    torch.testing.assert_close(ours.alphas, theirs.alphas, rtol=5e-4, atol=1e-7)


def test_trained_betas_survive_save_and_load(tmp_path):
    # diffusers' SchedulerCommonTest.test_trained_betas: two trained betas, saved and loaded.
    scheduler = GITSScheduler(num_train_timesteps=2, trained_betas=np.array([0.1, 0.3]))
    scheduler.save_pretrained(tmp_path)
    loaded = GITSScheduler.from_pretrained(tmp_path)
    assert loaded.betas.tolist() == scheduler.betas.tolist()
    assert loaded.alphas.tolist() == scheduler.alphas.tolist()


def public_attributes(cls) -> list[str]:
    return [name for name in dir(cls) if not name.startswith("_") and name not in ("config_name", "has_compatibles")]


@pytest.mark.parametrize("scheduler", [GITSScheduler(**SD), GITSFlowMatchScheduler(shift=3.0)], ids=["vp", "flow"])
def test_hasattr_answers_for_every_public_attribute(scheduler):
    for name in public_attributes(type(scheduler)):
        hasattr(scheduler, name)  # raises on anything but AttributeError
    # EasyAnimate-style probing: a flow scheduler has no VP init_noise_sigma, and says so with the helpful message.
    if isinstance(scheduler, GITSFlowMatchScheduler):
        assert not hasattr(scheduler, "init_noise_sigma")
        with pytest.raises(ValueError, match="use GITSScheduler"):
            scheduler.init_noise_sigma
    else:
        assert scheduler.init_noise_sigma == 1.0


@pytest.mark.parametrize(
    "stock,limit",
    [
        (DDPMScheduler(**SD), lambda x0: x0.clamp(-1, 1)),  # DDPM clips by default
        (DDIMScheduler(**SD, clip_sample=True, clip_sample_range=0.5), lambda x0: x0.clamp(-0.5, 0.5)),
        (DDPMScheduler(**SD, thresholding=True, sample_max_value=2.0), None),
    ],
    ids=["ddpm-default", "ddim-range", "thresholding"],
)
def test_x0_is_clipped_or_thresholded_as_the_stock_scheduler_does(stock, limit):
    gits = GITSScheduler.from_config(stock.config, solver="euler")
    gits.set_timesteps(4)
    stock.set_timesteps(4)
    sample = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    t = gits.timesteps[1]
    gits._step_index = 1
    model_output = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    ours = gits.step(model_output, t, sample).pred_original_sample
    raw = GITSScheduler.from_config(stock.config, solver="euler", clip_sample=False, thresholding=False)
    raw.set_timesteps(4)
    raw._step_index = 1
    unlimited = raw.step(model_output, t, sample).pred_original_sample
    assert unlimited.abs().max() > 1.5  # the case matters
    expected = limit(unlimited) if limit else stock._threshold_sample(unlimited)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize(
    "solver,stock_class", [("dpmpp_2m", DPMSolverMultistepScheduler), ("unipc", UniPCMultistepScheduler)]
)
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_the_uncalibrated_fallback_is_the_stock_solvers_schedule(solver, stock_class, spacing):
    config = {**SD, "timestep_spacing": spacing, "steps_offset": 1 if spacing == "leading" else 0}
    gits = GITSScheduler(**config, solver=solver)
    stock = stock_class(**config)
    gits.set_timesteps(10)
    stock.set_timesteps(10)
    torch.testing.assert_close(gits.sigmas.double(), stock.sigmas.double(), rtol=1e-5, atol=0)
    torch.testing.assert_close(gits.timesteps, stock.timesteps.float(), rtol=0, atol=0.5)
    if spacing == "linspace":
        assert float(gits.sigmas[-2]) > 0.3  # ends at t = 100, not with a nearly wasted step from t = 0


def test_jump_cost_statistics_accept_any_dtype_and_keep_float64_sums():
    grid = np.array([10.0, 3.0, 1.0, 0.3, 0.0])
    states, denoised = torch.randn(5, 3, 4), torch.randn(4, 3, 4)
    for accumulator in (JumpCostAccumulator(grid), SolverJumpCostAccumulator(grid, "dpmpp_2m")):
        reference = type(accumulator)(grid) if isinstance(accumulator, JumpCostAccumulator) else None
        accumulator.update(states.half(), denoised.half())
        assert accumulator.total.dtype == torch.float64 and accumulator.total.device.type == "cpu"
        if reference is not None:
            reference.update(states.half().float(), denoised.half().float())
            torch.testing.assert_close(accumulator.total, reference.total)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_jump_cost_statistics_accept_cuda_trajectories():
    grid = np.array([10.0, 3.0, 1.0, 0.3, 0.0])
    states, denoised = torch.randn(5, 3, 4), torch.randn(4, 3, 4)
    for make in (lambda: JumpCostAccumulator(grid), lambda: SolverJumpCostAccumulator(grid, "unipc")):
        on_gpu, on_cpu = make(), make()
        on_gpu.update(states.cuda(), denoised.cuda())
        on_cpu.update(states, denoised)
        torch.testing.assert_close(on_gpu.total, on_cpu.total)


def test_flow_scheduler_keeps_its_contract_through_a_config_round_trip(tmp_path):
    scheduler = GITSFlowMatchScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    scheduler.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert config["_class_name"] == "GITSFlowMatchScheduler" and config["shift"] == 3.0


def published_rows() -> dict[int, list[float]]:
    from diffusers_gits.schedules import load_published_gits_sd15

    return {int(k): v for k, v in load_published_gits_sd15()["schedules"].items()}


def test_the_sd15_preset_has_the_real_row_for_every_step_count_2_to_20():
    rows = published_rows()
    assert sorted(rows) == list(range(2, 21))
    preset = GITSScheduler.from_preset("sd15")
    for k in range(2, 21):
        expected = rows[k][:-1] + [0.0]
        np.testing.assert_allclose(preset.schedule_for(k), expected, rtol=1e-12)
        np.testing.assert_allclose(published_gits_sd15(k), expected, rtol=1e-12)
    # Rows 11-19 used to be stretched from the 20-step row: 12 steps were up to a third off the published row.
    np.testing.assert_allclose(preset.sigmas_for(12)[5], rows[12][5], rtol=1e-12)


@pytest.mark.parametrize("k", [1, 21, 25, 40])
def test_beyond_the_table_the_whole_20_step_row_is_stretched_as_comfyui_does(k):
    row = np.array(published_rows()[20])
    # ComfyUI's rule written out: log sigma of all 21 values (sigma_min included) at k + 1 uniform positions.
    expected = np.exp(np.interp(np.linspace(0, 1, k + 1), np.linspace(0, 1, 21), np.log(row)))
    expected[-1] = 0.0
    if k == 1:
        expected = np.exp(np.interp([0, 1], [0, 0.5, 1], np.log(published_rows()[2])))
        expected[-1] = 0.0
    preset = GITSScheduler.from_preset("sd15")
    np.testing.assert_allclose(preset.schedule_for(k), expected, rtol=1e-12)
    np.testing.assert_allclose(published_gits_sd15(k), expected, rtol=1e-12)  # the baseline: one code path
    if k == 25:
        assert preset.schedule_for(25)[-2] == pytest.approx(0.0768, abs=5e-4)  # sigma_min kept in the stretch


def test_the_coeff_tables_are_the_authors_grid_points_and_include_the_published_one():
    from diffusers_gits.schedules import load_gits_sd15_coeff_tables, sd15_coeffs

    assert sd15_coeffs() == pytest.approx([0.80 + 0.05 * i for i in range(15)])
    tables = load_gits_sd15_coeff_tables()["coeffs"]
    assert {int(k): row for k, row in tables["1.20"].items()} == published_rows()
    # Every value is a point of the authors' 101-point grid uniform in timestep (t = 999 - 9.99 i) on SD's schedule:
    # a check on the transcription of 4000 numbers.
    alphas_cumprod = DDPMScheduler(**SD).alphas_cumprod.numpy()
    train_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    grid = np.interp(np.linspace(999, 0, 101), np.arange(1000), train_sigmas)
    for coeff, rows in tables.items():
        for k, row in rows.items():
            assert len(row) == int(k) + 1 and np.all(np.diff(row) < 0), (coeff, k)
            off = np.min(np.abs(np.asarray(row)[:, None] - grid[None, :]) / np.asarray(row)[:, None], axis=1)
            assert off.max() < 3e-5, (coeff, k)


@pytest.mark.parametrize("coeff", [0.8, 1.05, 1.5])
def test_presets_for_every_coeff_follow_one_rule(coeff):
    from diffusers_gits.schedules import load_gits_sd15_coeff_tables

    rows = load_gits_sd15_coeff_tables()["coeffs"][f"{coeff:.2f}"]
    preset = GITSScheduler.from_preset("sd15", coeff=coeff)
    assert preset.config.calibration["coeff"] == coeff and "ComfyUI" in preset.config.calibration["source"]
    np.testing.assert_allclose(preset.schedule_for(7), rows["7"][:-1] + [0.0], rtol=1e-12)
    stretched = np.exp(np.interp(np.linspace(0, 1, 31), np.linspace(0, 1, 21), np.log(rows["20"])))
    np.testing.assert_allclose(preset.schedule_for(30)[:-1], stretched[:-1], rtol=1e-12)
