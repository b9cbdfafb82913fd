import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffusers_gits.noise import (
    VPNoiseSchedule,
    betas_from_config,
    cumulative_alphas,
    denoised_from_model_output,
    sigma_space_to_vp,
    vp_to_sigma_space,
)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_match_diffusers(schedule):
    ours = cumulative_alphas(betas_from_config(1000, 0.00085, 0.012, schedule))
    theirs = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule=schedule).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)  # diffusers accumulates in float32


def test_zero_snr_matches_diffusers_and_stays_finite():
    ours = cumulative_alphas(
        betas_from_config(1000, 0.00085, 0.012, "scaled_linear", rescale_betas_zero_snr=True), True
    )
    theirs = (
        DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", rescale_betas_zero_snr=True)
        .alphas_cumprod.double()
        .numpy()
    )
    np.testing.assert_allclose(ours[:-1], theirs[:-1], rtol=1e-4, atol=1e-7)
    assert np.isfinite(VPNoiseSchedule(ours).sigma_max)


def test_unknown_beta_schedule_names_the_value():
    with pytest.raises(ValueError, match="'cubic'"):
        betas_from_config(beta_schedule="cubic")


def test_sd_sigma_range_and_round_trip():
    noise = VPNoiseSchedule(cumulative_alphas(betas_from_config(1000, 0.00085, 0.012, "scaled_linear")))
    assert noise.sigma_min == pytest.approx(0.0291675, rel=1e-4)
    assert noise.sigma_max == pytest.approx(14.6146, rel=1e-4)
    t = np.array([999.0, 829.17, 500.5, 17.3, 0.0])
    np.testing.assert_allclose(noise.sigma_to_t(noise.t_to_sigma(t)), t, atol=1e-8)
    assert noise.sigma_to_t(0.0) == 0.0


def test_sigma_to_t_matches_euler_for_custom_sigmas():
    from diffusers import EulerDiscreteScheduler

    euler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sigmas = [14.6146, 5.0, 1.2, 0.3, 0.0]
    euler.set_timesteps(sigmas=sigmas)
    noise = VPNoiseSchedule(euler.alphas_cumprod.numpy())
    np.testing.assert_allclose(noise.sigma_to_t(sigmas[:-1]), euler.timesteps.numpy(), atol=1e-2)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_denoised_recovers_x0_from_exact_outputs(prediction_type):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    sigma = 2.5
    alpha = 1 / np.sqrt(1 + sigma**2)
    x_vp = alpha * x0 + sigma * alpha * eps
    output = {"epsilon": eps, "v_prediction": alpha * eps - sigma * alpha * x0, "sample": x0}[prediction_type]
    x = vp_to_sigma_space(x_vp, sigma)
    torch.testing.assert_close(x, x0 + sigma * eps)
    torch.testing.assert_close(denoised_from_model_output(output, x, sigma, prediction_type), x0)
    torch.testing.assert_close(sigma_space_to_vp(x, sigma), x_vp)


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="flow"):
        denoised_from_model_output(torch.zeros(1), torch.zeros(1), 1.0, "flow")


@pytest.mark.parametrize("snr_shift_scale, zero_snr", [(3.0, True), (3.0, False), (1.0, True)])
def test_cogvideox_snr_shift_is_honoured_as_its_ddim_applies_it(snr_shift_scale, zero_snr):
    """CogVideoX-2b ships `CogVideoXDDIMScheduler(snr_shift_scale=3.0)`: GITS must sample that noise schedule, not
    the unshifted one its betas alone describe."""
    from diffusers import CogVideoXDDIMScheduler

    from diffusers_gits import GITSScheduler

    stock = CogVideoXDDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
        rescale_betas_zero_snr=zero_snr, snr_shift_scale=snr_shift_scale, timestep_spacing="trailing",
    )  # fmt: skip
    theirs = stock.alphas_cumprod.double().numpy()
    ours = GITSScheduler.from_config(stock.config)
    assert ours.config.snr_shift_scale == snr_shift_scale
    np.testing.assert_allclose(ours.alphas_cumprod.double().numpy()[:-1], theirs[:-1], rtol=1e-4, atol=1e-7)
    noise = VPNoiseSchedule.from_config(dict(stock.config))
    np.testing.assert_allclose(noise.train_sigmas[:-1], ((1 - theirs) / theirs)[:-1] ** 0.5, rtol=1e-4)
    with pytest.raises(ValueError, match="snr_shift_scale"):
        betas_from_config(snr_shift_scale=0.0)


def test_zero_snr_of_linear_betas_keeps_sigma_rising():
    """Rescaled linear betas (which stock DPM-Solver accepts) reach alphabar 4e-9 before the last step, below the
    2^-24 that stands in for its final 0: the stand-in stays below its neighbour."""
    from diffusers_gits import GITSScheduler

    scheduler = GITSScheduler(beta_start=1e-4, beta_end=0.02, rescale_betas_zero_snr=True)
    sigmas = scheduler.noise_schedule.train_sigmas
    assert np.all(np.diff(sigmas) > 0) and np.isfinite(sigmas[-1])
    scheduler.set_timesteps(6)
    assert len(scheduler.timesteps) == 6
