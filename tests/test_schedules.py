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
