"""Every pipeline family through its own `__call__`: calibrated, sampled, saved and reloaded, offline and tiny."""

import logging
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import (
    SD_BETAS,
    cogvideox_inputs,
    cogview4_inputs,
    deepfloyd_if_inputs,
    flux2_inputs,
    flux_inputs,
    hidream_inputs,
    kandinsky22_inputs,
    pixart_inputs,
    sana_inputs,
    sd3_inputs,
    tiny_cogvideox_2b_pipe,
    tiny_cogview4_pipe,
    tiny_deepfloyd_if_pipe,
    tiny_flux2_pipe,
    tiny_flux_pipe,
    tiny_hidream_pipe,
    tiny_kandinsky22_pipe,
    tiny_pixart_sigma_pipe,
    tiny_sana_pipe,
    tiny_sd3_pipe,
    tiny_sd_pipe,
    tiny_sdxl_pipe,
    tiny_wan_pipe,
    wan_inputs,
)
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, StableDiffusionInpaintPipeline

from diffusers_gits import GITSFlowMatchScheduler, GITSScheduler
from diffusers_gits.noise import shift_flow_sigmas, unshift_flow_sigmas


STEPS = [3, 5]
#: Tiny settings; the budget leaves room for a held-out race of a few noises, so every family runs every stage.
FAST = {"num_warmup": 8, "batch_size": 4, "grid_size": 12, "budget": 8.0, "progress": False, "cache": False}


def inpaint_inputs():
    g = torch.Generator().manual_seed(3)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    return {"image": torch.rand(1, 3, 16, 16, generator=g), "mask_image": mask, "height": 16, "width": 16}


FAMILIES = {
    "sd2_vpred_zero_snr": (
        lambda d: tiny_sd_pipe(
            d,
            scheduler=DDIMScheduler(
                prediction_type="v_prediction",
                rescale_betas_zero_snr=True,
                timestep_spacing="trailing",
                steps_offset=1,
                clip_sample=False,
                **SD_BETAS,
            ),
        ),
        lambda: {"height": 16, "width": 16},
        GITSScheduler,
    ),
    "sdxl": (tiny_sdxl_pipe, lambda: {"height": 16, "width": 16}, GITSScheduler),
    "pixart_sigma": (lambda d: tiny_pixart_sigma_pipe(), pixart_inputs, GITSScheduler),
    "inpainting": (
        lambda d: tiny_sd_pipe(d, pipeline_class=StableDiffusionInpaintPipeline, in_channels=9),
        inpaint_inputs,
        GITSScheduler,
    ),
    "sd3": (lambda d: tiny_sd3_pipe(), sd3_inputs, GITSFlowMatchScheduler),
    "flux": (lambda d: tiny_flux_pipe(), flux_inputs, GITSFlowMatchScheduler),
    # Flux.2: mu from the image size and the step count.
    "flux2": (lambda d: tiny_flux2_pipe(), flux2_inputs, GITSFlowMatchScheduler),
    # CogView4: sigmas and timesteps both passed, the model conditioned on the unshifted time.
    "cogview4": (lambda d: tiny_cogview4_pipe(), cogview4_inputs, GITSFlowMatchScheduler),
    # CogVideoX-2b as shipped: its DDIM shifts the SNR (snr_shift_scale=3).
    "cogvideox_2b": (lambda d: tiny_cogvideox_2b_pipe(), cogvideox_inputs, GITSScheduler),
    # DeepFloyd IF stage I: pixel space, learned variance, dynamic thresholding.
    "deepfloyd_if": (lambda d: tiny_deepfloyd_if_pipe(), deepfloyd_if_inputs, GITSScheduler),
    # Kandinsky 2.2's decoder: image embeddings, learned variance.
    "kandinsky22": (lambda d: tiny_kandinsky22_pipe(), kandinsky22_inputs, GITSScheduler),
    # Sana as shipped: DPM-Solver with flow sigmas.
    "sana": (lambda d: tiny_sana_pipe(), sana_inputs, GITSFlowMatchScheduler),
    # Wan as shipped: UniPC with flow sigmas and a static flow_shift, no sigmas passed by the pipeline.
    "wan": (lambda d: tiny_wan_pipe(), wan_inputs, GITSFlowMatchScheduler),
    # HiDream-I1-Full as shipped: UniPC with flow sigmas; its Llama embeddings are batch-second.
    "hidream": (lambda d: tiny_hidream_pipe(), hidream_inputs, GITSFlowMatchScheduler),
}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """family -> (pipe, inputs, calibrated scheduler), each calibrated once through the pipeline's own __call__."""
    results = {}

    def get(name):
        if name not in results:
            build, inputs, _ = FAMILIES[name]
            pipe = build(tmp_path_factory.mktemp(name))
            prompts = None if any("embeds" in name for name in inputs()) else ["a red fox", "a blue car"]
            scheduler = GITSScheduler.from_calibration(pipe, STEPS, prompts=prompts, **FAST, **inputs())
            results[name] = (pipe, inputs, scheduler)
        return results[name]

    return get


@contextmanager
def installed(pipe, scheduler):
    """`scheduler` on `pipe`, yielding the timesteps its `step` is called with; the pipe's scheduler restored after."""
    original, pipe.scheduler = pipe.scheduler, scheduler
    calls = []
    step = scheduler.step
    scheduler.step = lambda *args, **kwargs: calls.append(float(args[1])) or step(*args, **kwargs)
    try:
        yield calls
    finally:
        pipe.scheduler = original
        del scheduler.step


def public_config(scheduler) -> dict:
    return {k: v for k, v in scheduler.config.items() if not k.startswith("_")}


def run(pipe, inputs, steps, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    call = {**inputs(), **kwargs}
    if not any("embeds" in name for name in call):
        call["prompt"] = "a red fox"
    output = pipe(**call, num_inference_steps=steps, output_type="latent", generator=generator)
    return torch.as_tensor(output.frames if hasattr(output, "frames") else output.images)  # IF returns numpy


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_is_calibrated_sampled_saved_and_reloaded(calibrated, family, tmp_path):
    pipe, inputs, scheduler = calibrated(family)
    original = pipe.scheduler
    assert type(scheduler) is FAMILIES[family][2]
    assert scheduler.calibrated_steps == STEPS
    assert scheduler.config.calibration["pipeline_class"] == type(pipe).__name__
    assert all("gits_error" in scheduler.calibration_report[str(k)] for k in STEPS)
    try:
        pipe.scheduler = scheduler
        latents = run(pipe, inputs, 5)
        assert torch.isfinite(latents).all()
        np.testing.assert_allclose(pipe.scheduler.sigmas.numpy(), scheduler.schedule_for(5), rtol=1e-6)

        scheduler.save_pretrained(tmp_path)
        reloaded = GITSScheduler.from_pretrained(tmp_path)
        assert type(reloaded) is type(scheduler)
        assert public_config(reloaded) == public_config(scheduler)
        pipe.scheduler = reloaded
        torch.testing.assert_close(run(pipe, inputs, 5), latents, rtol=0, atol=0)
    finally:
        pipe.scheduler = original


@pytest.mark.parametrize("strength", [0.4, 0.7, 1.0])
def test_inpainting_honours_the_step_count_at_every_strength(calibrated, strength):
    pipe, inputs, scheduler = calibrated("inpainting")
    with installed(pipe, scheduler) as calls:
        latents = run(pipe, inputs, 5, strength=strength)
    assert len(scheduler.timesteps) == 5 and torch.isfinite(latents).all()
    assert len(calls) == min(int(5 * strength), 5)


def test_flux_calibration_records_mu_and_wins_over_the_default_sigmas(calibrated, caplog):
    pipe, inputs, scheduler = calibrated("flux")
    seq_len = run(pipe, inputs, 1).shape[1]  # Flux packs latents into (batch, tokens, channels); mu follows tokens
    config = pipe.scheduler.config
    expected_mu = config.base_shift + (config.max_shift - config.base_shift) * (
        seq_len - config.base_image_seq_len
    ) / (config.max_image_seq_len - config.base_image_seq_len)
    assert scheduler.calibration_mu == pytest.approx(expected_mu)
    assert scheduler.calibration_record["grid"]["type"] == "shifted_uniform_sigma"
    fresh = GITSFlowMatchScheduler.from_config(scheduler.config)
    with caplog.at_level(logging.WARNING, logger="diffusers_gits"):
        fresh.set_timesteps(5, sigmas=np.linspace(1, 1 / 5, 5), mu=expected_mu)
    np.testing.assert_allclose(fresh.sigmas.numpy(), scheduler.schedule_for(5), rtol=1e-6)
    assert "replace_default_sigmas=False" in caplog.text  # visible, and says how to opt out
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffusers_gits"):
        fresh.set_timesteps(6, sigmas=np.linspace(1, 1 / 6, 6), mu=expected_mu)
    assert "replace_default_sigmas" not in caplog.text  # once per scheduler

    # Opted out: the caller's uniform sigmas are sampled, shifted exactly as the stock FlowMatchEuler shifts them.
    fresh.register_to_config(replace_default_sigmas=False)
    fresh.set_timesteps(5, sigmas=np.linspace(1, 1 / 5, 5), mu=expected_mu)
    stock = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    stock.set_timesteps(5, sigmas=np.linspace(1, 1 / 5, 5), mu=expected_mu)
    np.testing.assert_allclose(fresh.sigmas.numpy(), stock.sigmas.numpy(), rtol=1e-5)


def test_flux_at_another_resolution_reshifts_the_schedule_with_a_warning(calibrated, caplog):
    _, _, scheduler = calibrated("flux")
    mu = scheduler.calibration_mu
    with caplog.at_level(logging.WARNING, logger="diffusers_gits"):
        moved = scheduler.schedule_for(5, mu=mu + 0.5)
    assert "re-shifts" in caplog.text
    same_unshifted = unshift_flow_sigmas(scheduler.schedule_for(5), np.exp(mu))
    np.testing.assert_allclose(moved, shift_flow_sigmas(same_unshifted, np.exp(mu + 0.5)))
    assert moved[1] > scheduler.schedule_for(5)[1]  # a larger image shifts towards more noise


def test_custom_sigmas_are_shifted_as_flowmatch_shifts_them():
    for config in ({"shift": 3.0}, {"use_dynamic_shifting": True}):
        stock = FlowMatchEulerDiscreteScheduler(**config)
        ours = GITSFlowMatchScheduler.from_config(stock.config)
        stock.set_timesteps(sigmas=[1.0, 0.6, 0.3], mu=0.8)
        ours.set_timesteps(sigmas=[1.0, 0.6, 0.3], mu=0.8)
        torch.testing.assert_close(ours.sigmas, stock.sigmas)
        torch.testing.assert_close(ours.timesteps, stock.timesteps)


@pytest.mark.parametrize("num_steps", [1, 4, 9, 28])
@pytest.mark.parametrize("config", [{"shift": 3.0}, {"use_dynamic_shifting": True}, {"shift": 1.0}])
def test_uncalibrated_flow_scheduler_runs_flowmatch_default(config, num_steps):
    stock = FlowMatchEulerDiscreteScheduler(**config)
    ours = GITSFlowMatchScheduler.from_config(stock.config)
    stock.set_timesteps(num_steps, mu=0.7)
    ours.set_timesteps(num_steps, mu=0.7)
    torch.testing.assert_close(ours.sigmas, stock.sigmas)
    torch.testing.assert_close(ours.timesteps, stock.timesteps)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_stock_flowmatch_with_exported_sigmas_reproduces_gits_euler(calibrated, family):
    pipe, inputs, scheduler = calibrated(family)
    stock = pipe.scheduler
    try:
        pipe.scheduler = GITSFlowMatchScheduler.from_config(scheduler.config, solver="euler")
        ours = run(pipe, inputs, 5)
        pipe.scheduler = stock
        theirs = run(pipe, inputs, 5, sigmas=scheduler.sigmas_for(5))
        np.testing.assert_allclose(stock.sigmas.numpy(), scheduler.schedule_for(5), rtol=1e-5, atol=1e-6)
    finally:
        pipe.scheduler = stock
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_sd_schedule_on_a_flow_pipeline_raises(calibrated):
    flux, flux_in, _ = calibrated("flux")
    sd3, _, _ = calibrated("sd3")
    vp = GITSScheduler.from_preset("sd15")
    original, flux.scheduler = flux.scheduler, vp
    try:
        with pytest.raises(ValueError, match="GITSFlowMatchScheduler"):
            run(flux, flux_in, 5)
    finally:
        flux.scheduler = original
    with pytest.raises(ValueError, match="flow-matching"):
        vp.check_pipeline(sd3)  # SD3 without dynamic shifting passes no `mu`: check_pipeline is how to tell
    with pytest.raises(ValueError, match="GITSFlowMatchScheduler"):
        GITSScheduler.from_config(sd3.scheduler.config)


@pytest.mark.parametrize("family", ["sdxl", "pixart_sigma", "inpainting"])
def test_flow_schedule_on_a_vp_pipeline_raises(calibrated, family):
    pipe, inputs, _ = calibrated(family)
    _, _, flow = calibrated("sd3")
    original, pipe.scheduler = pipe.scheduler, flow
    try:
        with pytest.raises(ValueError, match="use GITSScheduler"):
            run(pipe, inputs, 5)
    finally:
        pipe.scheduler = original
    with pytest.raises(ValueError, match="use GITSScheduler"):
        flow.check_pipeline(pipe)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("dpmpp_2m", 2)])
def test_stock_dpm_solver_with_exported_timesteps_reproduces_gits(sd_pipe, solver, order):
    """DPMSolverMultistepScheduler takes only integer timesteps: on those it runs GITS's DDIM / DPM-Solver++(2M)."""
    from diffusers import DPMSolverMultistepScheduler

    preset = GITSScheduler.from_preset("sd15")
    timesteps = preset.timesteps_for(5)
    stock = sd_pipe.scheduler
    try:
        sd_pipe.scheduler = GITSScheduler.from_config(stock.config, solver=solver)
        ours = sd_pipe(
            "a red fox", timesteps=timesteps, output_type="latent", generator=torch.Generator().manual_seed(0)
        )
        sd_pipe.scheduler = DPMSolverMultistepScheduler.from_config(stock.config, solver_order=order)
        theirs = sd_pipe(
            "a red fox", timesteps=timesteps, output_type="latent", generator=torch.Generator().manual_seed(0)
        )
    finally:
        sd_pipe.scheduler = stock
    torch.testing.assert_close(ours.images, theirs.images, rtol=1e-4, atol=1e-4)


def test_sdxl_denoising_end_runs_the_first_part_of_the_schedule(calibrated):
    pipe, inputs, scheduler = calibrated("sdxl")
    with installed(pipe, scheduler) as calls:
        latents = run(pipe, inputs, 5, denoising_end=0.3)
    cutoff = 1000 - 0.3 * 1000
    assert torch.isfinite(latents).all()
    assert calls == [float(t) for t in scheduler.timesteps if t >= cutoff]
    assert 0 < len(calls) < 5


@pytest.mark.parametrize("strength", [0.4, 0.7, 1.0])
def test_flux_img2img_runs_the_calibrated_schedule_from_its_strength(calibrated, strength):
    from diffusers import FluxImg2ImgPipeline

    flux, inputs, scheduler = calibrated("flux")
    pipe = FluxImg2ImgPipeline(**{**flux.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with installed(pipe, scheduler) as calls:
        latents = run(pipe, inputs, 5, image=image, strength=strength)
    assert torch.isfinite(latents).all() and len(scheduler.timesteps) == 5
    start = int(5 - 5 * strength)  # Flux's rule: t_start = int(N - N * strength)
    assert calls == scheduler.timesteps.tolist()[start:]


@pytest.mark.parametrize("family", ["wan", "hidream"])
def test_unipc_flow_pipeline_as_shipped_calibrates_as_a_static_shift_flow_model_for_its_unipc(calibrated, family):
    """Wan's and HiDream-Full's UniPC with flow sigmas: calibrated as a flow model at its flow_shift, for UniPC (their
    solver), compared with UniPC's own default spacing, and used by the pipeline at every step count (Wan passes no
    sigmas; HiDream passes none to a UniPC scheduler)."""
    from diffusers_gits.schedules import flow_sigmas_default

    pipe, inputs, scheduler = calibrated(family)
    assert scheduler.config.solver == "unipc" and scheduler.config.shift == 3.0
    assert not scheduler.config.use_dynamic_shifting and scheduler.config.calibration["mu"] is None
    for k in STEPS:
        errors = scheduler.calibration_report[str(k)]["search_noise_pooled_rmse"]
        assert {"stock_default", "uniform", "shifted", "beta", "tors"} <= set(errors)
    stock = pipe.scheduler
    stock.set_timesteps(5)
    np.testing.assert_allclose(stock.sigmas.numpy(), flow_sigmas_default(5, 3.0), atol=2e-6)
    with installed(pipe, scheduler) as calls:
        run(pipe, inputs, 4)  # not calibrated: stretched from the nearest calibrated schedule
    assert len(calls) == 4
    np.testing.assert_allclose(np.array(calls) / 1000, scheduler.schedule_for(4)[:-1], rtol=1e-5)


def test_flux2_records_mu_per_step_count_and_samples_each_schedule_unshifted(calibrated, caplog):
    """Flux.2 passes `compute_empirical_mu(image_seq_len, num_steps)`: every calibrated step count keeps the `mu` the
    pipeline passes at it, so sampling at that count is not re-shifted (no warning), while another resolution is."""
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    pipe, inputs, scheduler = calibrated("flux2")
    per_step = scheduler.config.calibration["mu_per_step"]
    assert set(per_step) == {str(k) for k in STEPS}
    for k in STEPS:
        assert per_step[str(k)] == pytest.approx(compute_empirical_mu(image_seq_len=64, num_steps=k))
    assert per_step["3"] != per_step["5"]
    with caplog.at_level(logging.WARNING), installed(pipe, scheduler):
        for k in STEPS:
            run(pipe, inputs, k)
            np.testing.assert_allclose(pipe.scheduler.sigmas.numpy(), scheduler.schedule_for(k), rtol=1e-6)
            np.testing.assert_allclose(
                scheduler.schedule_for(k), scheduler.config.gits_sigmas[str(k)], rtol=1e-12
            )  # as calibrated: no re-shift at the calibration's own mu for k
    assert "re-shifts" not in caplog.text
    moved = scheduler.schedule_for(5, per_step["5"] + 0.3)  # another image size
    assert not np.allclose(moved, scheduler.config.gits_sigmas["5"])


def test_cogview4_samples_the_calibrated_schedule_with_the_model_seeing_unshifted_time(calibrated):
    pipe, inputs, scheduler = calibrated("cogview4")
    mu = scheduler.calibration_mu
    with installed(pipe, scheduler) as calls:
        run(pipe, inputs, 5)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), scheduler.schedule_for(5), rtol=1e-6)
    unshifted = unshift_flow_sigmas(scheduler.schedule_for(5)[:-1], scheduler.shift_factor(mu))
    np.testing.assert_allclose(np.array(calls), unshifted * 1000, rtol=1e-5)


def test_cogvideox_2b_is_calibrated_on_its_shifted_noise_schedule(calibrated):
    pipe, _, scheduler = calibrated("cogvideox_2b")
    assert scheduler.config.snr_shift_scale == 3.0
    stock = pipe.scheduler.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy()[:-1], stock[:-1], rtol=1e-4, atol=1e-7)
