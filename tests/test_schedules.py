import numpy as np
import pytest

from diffusers_gits.noise import VPNoiseSchedule, betas_from_config, cumulative_alphas
from diffusers_gits.schedules import (
    align_your_steps_sd15,
    karras_sigmas,
    load_published_gits_sd15,
    loglinear_interpolate,
    logsnr_sigmas,
    published_gits_sd15,
    timestep_spacing_sigmas,
    validate_sigmas,
)


NOISE = VPNoiseSchedule(cumulative_alphas(betas_from_config(1000, 0.00085, 0.012, "scaled_linear")))


def builders():
    return {
        "linspace": lambda n: timestep_spacing_sigmas(NOISE, n, "linspace"),
        "leading": lambda n: timestep_spacing_sigmas(NOISE, n, "leading", 1),
        "trailing": lambda n: timestep_spacing_sigmas(NOISE, n, "trailing"),
        "karras": lambda n: karras_sigmas(NOISE.sigma_min, NOISE.sigma_max, n),
        "logsnr": lambda n: logsnr_sigmas(NOISE.sigma_min, NOISE.sigma_max, n),
        "ays": align_your_steps_sd15,
        "published": published_gits_sd15,
    }


@pytest.mark.parametrize("name", list(builders()))
@pytest.mark.parametrize("n", [1, 2, 5, 6, 8, 10, 13, 25])
def test_every_schedule_is_valid_with_exact_length(name, n):
    sigmas = builders()[name](n)
    assert len(validate_sigmas(sigmas)) == n + 1


def test_timestep_spacings_match_diffusers():
    from diffusers import EulerDiscreteScheduler

    for spacing, offset in (("linspace", 0), ("leading", 1), ("trailing", 0)):
        euler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing=spacing,
            steps_offset=offset,
        )
        euler.set_timesteps(7)
        np.testing.assert_allclose(timestep_spacing_sigmas(NOISE, 7, spacing, offset), euler.sigmas.numpy(), rtol=1e-4)


def test_loglinear_interpolation_keeps_endpoints_and_identity():
    sigmas = np.array([14.6, 5.0, 1.0, 0.2, 0.0])
    np.testing.assert_allclose(loglinear_interpolate(sigmas, 4), sigmas)
    stretched = loglinear_interpolate(sigmas, 9)
    assert stretched[0] == pytest.approx(14.6) and stretched[-2] == pytest.approx(0.2) and stretched[-1] == 0


def test_published_rows_are_the_authors_with_final_zero():
    table = load_published_gits_sd15()
    assert "2405.11326" in table["source"]
    row = published_gits_sd15(6)
    np.testing.assert_allclose(row[:-1], table["schedules"]["6"][:-1])
    assert row[-1] == 0


@pytest.mark.parametrize(
    "bad,match",
    [
        ([1.0], "at least 2"),
        ([1.0, 2.0, 0.0], "decreasing"),
        ([2.0, 1.0, 0.5], "end in 0"),
        ([2.0, -1.0], "non-negative"),
        ([np.nan, 0.0], "finite"),
    ],
)
def test_validate_sigmas_names_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_sigmas(bad)


@pytest.mark.parametrize("spacing", ["beta", "karras", "exponential"])
@pytest.mark.parametrize("pipeline", ["sd3", "flux"])
def test_flow_spacing_baselines_are_what_flowmatch_euler_samples_in_the_pipeline(spacing, pipeline):
    """Each spacing baseline equals the sigmas a stock FlowMatchEuler scheduler with the flag set runs inside the
    pipeline: SD3 (static shift, no sigmas passed) and Flux (dynamic shift, passes sigmas and mu)."""
    from conftest import flux_inputs, sd3_inputs, tiny_flux_pipe, tiny_sd3_pipe
    from diffusers import FlowMatchEulerDiscreteScheduler

    from diffusers_gits.calibration.recorder import PipelineRunner, probe_shift
    from diffusers_gits.schedules import FLOW_STOCK_SPACINGS, flow_stock_spacing_sigmas

    pipe, inputs = (tiny_sd3_pipe(), sd3_inputs()) if pipeline == "sd3" else (tiny_flux_pipe(), flux_inputs())
    config = dict(pipe.scheduler.config)
    mu, passes_sigmas = probe_shift(PipelineRunner(pipe, None, 0, 1, inputs), config)
    assert passes_sigmas == (pipeline == "flux") and (mu is None) == (pipeline == "sd3")
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config, **{FLOW_STOCK_SPACINGS[spacing]: True})
    pipe(**inputs, num_inference_steps=5, output_type="latent")
    sampled = pipe.scheduler.sigmas.double().numpy()
    expected = flow_stock_spacing_sigmas(config, spacing, 5, mu, passes_sigmas)
    assert np.array_equal(sampled, expected)
    assert len(expected) == 6 and expected[-1] == 0 and np.all(np.diff(expected) < 0)


def test_oss_flux_table_is_stretched_log_linearly_and_pinned_to_zero():
    from diffusers_gits.schedules import load_published_tables, oss_flux_sigmas

    table = np.asarray(load_published_tables()["oss"]["flux_flow_sigmas_10"])
    assert np.array_equal(oss_flux_sigmas(10), np.append(table[:-1], 0.0))
    five = oss_flux_sigmas(5)
    assert len(five) == 6 and five[-1] == 0 and five[0] == table[0] and np.all(np.diff(five) < 0)
    # Interior points lie on the table's log-linear interpolant at uniform positions.
    positions = np.linspace(0, 1, 6)[1:-1]
    expected = np.exp(np.interp(positions, np.linspace(0, 1, len(table)), np.log(table)))
    assert np.allclose(five[1:-1], expected)


def test_flow_baselines_include_what_flux_users_run():
    from diffusers_gits.schedules import flow_baseline_schedules

    config = {"shift": 3.0, "num_train_timesteps": 1000}
    schedules = flow_baseline_schedules(6, 3.0, 1e-3, config)
    assert set(schedules) == {"uniform", "shifted", "stock_default", "oss_flux", "beta", "karras", "exponential"}
    for sigmas in schedules.values():
        assert len(sigmas) == 7 and sigmas[-1] == 0 and np.all(np.diff(sigmas) < 0)
    assert set(flow_baseline_schedules(6, 3.0, 1e-3)) == {"uniform", "shifted", "stock_default", "oss_flux"}


def test_log_snr_blend_moves_each_point_along_the_log_snr_and_keeps_the_ends():
    from diffusers_gits.noise import FLOW_PATH, SIGMA_PATH
    from diffusers_gits.schedules import log_snr_blend

    start, end = np.array([14.6, 1.0, 0.04, 0.0]), np.array([14.6, 4.0, 0.01, 0.0])
    np.testing.assert_allclose(log_snr_blend(start, end, 0.5, SIGMA_PATH), [14.6, 2.0, 0.02, 0.0], rtol=1e-12)
    np.testing.assert_allclose(log_snr_blend(start, end, 0.0, SIGMA_PATH), start, rtol=1e-12)
    np.testing.assert_allclose(log_snr_blend(start, end, 1.0, SIGMA_PATH), end, rtol=1e-12)
    # Flow path: log-SNR log((1 - s) / s); halfway between 0.5 (0) and 0.8 (log 1/4) is log 1/2, sigma 2/3.
    flow = log_snr_blend(np.array([1.0, 0.5, 0.0]), np.array([1.0, 0.8, 0.0]), 0.5, FLOW_PATH)
    np.testing.assert_allclose(flow, [1.0, 2 / 3, 0.0], rtol=1e-12)
    with pytest.raises(ValueError, match="weight must be in"):
        log_snr_blend(start, end, 1.5, SIGMA_PATH)
    with pytest.raises(ValueError, match="same length"):
        log_snr_blend(start, np.array([14.6, 1.0, 0.0]), 0.5, SIGMA_PATH)
    # `start`'s first sigma stays (a published table's is rounded); an interior above it is refused.
    rounded = log_snr_blend(start, np.array([14.615, 4.0, 0.01, 0.0]), 0.5, SIGMA_PATH)
    np.testing.assert_allclose(rounded, [14.6, 2.0, 0.02, 0.0], rtol=1e-12)
    with pytest.raises(ValueError, match="the blend must be strictly decreasing"):
        log_snr_blend(start, np.array([400.0, 300.0, 0.01, 0.0]), 0.5, SIGMA_PATH)
