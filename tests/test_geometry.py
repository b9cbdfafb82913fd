"""Trajectory geometry on trajectories whose geometry is known, the KDE's annealed mean shift exactly, and `analyze`
end to end on the embedded model and a tiny Stable Diffusion pipeline."""

import math

import numpy as np
import pytest
import torch

from diffusers_gits.geometry import (
    chord_deviations,
    convergence,
    deviation_profile,
    explained_variance,
    mean_shift,
    monotone_fraction,
    step_angles,
    summarize,
)
from diffusers_gits.testing.gaussian_mixture import GaussianMixture


def embed(points: torch.Tensor, dim: int = 12, seed: int = 0) -> torch.Tensor:
    """(T, B, k) points placed in a random k-dimensional subspace of R^dim, one subspace per trajectory."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(points.shape[1]):
        basis, _ = torch.linalg.qr(torch.randn(dim, points.shape[2], generator=g, dtype=torch.float64))
        out.append(points[:, b].double() @ basis.T + torch.randn(dim, generator=g, dtype=torch.float64))
    return torch.stack(out, dim=1)


def arc(num_points: int, angle: float, radius: float = 3.0) -> torch.Tensor:
    theta = torch.linspace(0, angle, num_points, dtype=torch.float64)
    return radius * torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)


def test_a_straight_line_has_no_deviation_and_one_component():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)[:, None, None]
    states = embed(torch.cat([t * 4.0], dim=-1).expand(11, 3, 1).clone())
    assert chord_deviations(states).abs().max() < 1e-12
    assert deviation_profile(states).abs().max() < 1e-12
    summary = summarize(states)
    assert summary["trajectory_pca_top1"] == pytest.approx(1.0, abs=1e-12)
    assert summary["deviation_pca_top1"] == 1.0 and summary["max_deviation"] < 1e-12  # nothing to explain
    assert step_angles(states).max() < 1e-4


def test_a_planar_arc_has_two_components_and_the_known_profile():
    angle, steps = 1.2, 25
    states = embed(arc(steps, angle)[:, None, :].expand(steps, 4, 2).clone())
    # Distance of the arc point at theta from the chord: r cos(theta - angle / 2) - r cos(angle / 2), over the
    # chord's length 2 r sin(angle / 2).
    theta = torch.linspace(0, angle, steps, dtype=torch.float64)
    expected = (torch.cos(theta - angle / 2) - math.cos(angle / 2)) / (2 * math.sin(angle / 2))
    torch.testing.assert_close(deviation_profile(states), expected[:, None].expand(steps, 4))
    top = explained_variance(states.flatten(2), center=True).mean(0)
    assert top[0] < 0.999 and top[1] == pytest.approx(1.0, abs=1e-12)
    assert explained_variance(chord_deviations(states))[:, 0].min() == pytest.approx(1.0, abs=1e-12)
    expected_angle = torch.full((steps - 2, 4), math.degrees(angle / (steps - 1)), dtype=torch.float64)
    torch.testing.assert_close(step_angles(states), expected_angle)
    summary = summarize(states)
    assert summary["regularity_score"] == pytest.approx(1.0) and summary["peak_position"] == pytest.approx(0.5)
    assert summary["max_deviation"] == pytest.approx((1 - math.cos(angle / 2)) / (2 * math.sin(angle / 2)))


def test_different_shapes_lower_the_regularity_score():
    same = embed(arc(21, 1.0)[:, None, :].expand(21, 2, 2).clone())
    theta = 1.0 * torch.linspace(0, 1, 21, dtype=torch.float64) ** 3  # the same arc, most steps near its start
    late = torch.stack([arc(21, 1.0), 3.0 * torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)], dim=1)
    assert summarize(same)["regularity_score"] == pytest.approx(1.0)
    assert summarize(embed(late))["regularity_score"] < 0.95


def test_convergence_of_the_denoising_trajectory():
    states = embed(arc(9, 0.8)[:, None, :].expand(9, 3, 2).clone())
    denoised = states[-1:].expand(8, 3, 12).clone()  # a perfect denoiser: the final sample from the start
    sampling, denoising = convergence(states, denoised)
    assert sampling[0].tolist() == pytest.approx([1.0] * 3) and denoising.abs().max() < 1e-12
    assert summarize(states, denoised)["denoising_closer_fraction"] == 1.0
    with pytest.raises(ValueError, match="denoised must be"):
        convergence(states, denoised[:-1])


@pytest.mark.parametrize("bandwidth", [0.0, 0.25])
def test_the_kde_denoiser_is_an_annealed_mean_shift(bandwidth):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(40, 6, generator=g, dtype=torch.float64)
    kde = GaussianMixture.kde(data, bandwidth)
    x = torch.randn(8, 6, generator=g, dtype=torch.float64) * 2
    for sigma in (0.05, 0.5, 3.0, 20.0):
        # E[x0 | x] = (sigma^2 m(x) + h^2 x) / (h^2 + sigma^2), m = one mean-shift step of bandwidth sqrt(h^2 + sigma^2)
        h2 = bandwidth**2
        shift = mean_shift(data, x, math.sqrt(h2 + sigma**2))
        expected = (sigma**2 * shift + h2 * x) / (h2 + sigma**2)
        torch.testing.assert_close(kde.denoiser(x, sigma), expected, rtol=1e-12, atol=1e-12)


def test_kde_log_density_and_monotone_fraction():
    data = torch.zeros(1, 3, dtype=torch.float64)
    kde = GaussianMixture.kde(data, 0.5)
    x = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    expected = -0.5 * 1.0 / 0.25 - 1.5 * math.log(2 * math.pi * 0.25)
    assert float(kde.log_density(x)) == pytest.approx(expected, rel=1e-12)
    assert monotone_fraction(np.array([1.0, 2.0, 3.0, 2.5])) == pytest.approx(2 / 3)


def test_bad_trajectories_are_refused():
    with pytest.raises(ValueError, match="T >= 3"):
        summarize(torch.zeros(2, 1, 4))


def test_analyze_on_the_embedded_model(tmp_path):
    from diffusers_gits.analysis import analyze, format_summary
    from diffusers_gits.embedded import load_embedded_pipeline

    summary = analyze(
        load_embedded_pipeline("digits"),
        num_samples=8,
        num_steps=20,
        batch_size=4,
        output_dir=tmp_path,
        progress=False,
    )
    assert summary["num_trajectories"] == 8 and summary["num_steps"] == 20 and len(summary["sigmas"]) == 21
    assert 0 < summary["max_deviation"] < 0.5 and summary["regularity_score"] > 0.5
    assert summary["trajectory_pca_top3"] > 0.9
    assert {p.name for p in tmp_path.iterdir()} == {"trajectories.png", "deviation_profiles.png", "convergence.png"}
    assert "regularity score" in format_summary(summary)


def test_analyze_command_on_a_tiny_stable_diffusion_pipeline(sd_pipe, tmp_path, capsys):
    from diffusers_gits.cli import main

    sd_pipe.save_pretrained(tmp_path / "sd")
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    args = ["analyze", str(tmp_path / "sd"), "--num-samples", "4", "--steps", "6", "--batch-size", "2"]
    args += ["--prompts", str(tmp_path / "prompts.txt"), "--height", "32", "--width", "32", "--device", "cpu"]
    assert main([*args, "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "4 trajectories of 6 steps" in out and "regularity score" in out
    assert (tmp_path / "out" / "trajectories.png").is_file()


def test_analyze_on_a_flow_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from diffusers_gits.analysis import analyze, record_trajectories
    from diffusers_gits.testing.gaussian_mixture import MixtureFlowPipeline

    mixture = GaussianMixture.random()
    pipe = MixtureFlowPipeline(mixture, FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), mu=1.15)
    states, denoised, sigmas = record_trajectories(pipe, 6, num_steps=30, batch_size=3, progress=False)
    assert states.shape == (31, 6, mixture.dim) and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    # On the flow path the last state is the sample and every x0 estimate's distance to it shrinks to 0.
    torch.testing.assert_close(denoised[-1], states[-1], rtol=0, atol=1e-4)
    summary = analyze(pipe, num_samples=6, num_steps=30, batch_size=3, progress=False)
    assert summary["denoising_closer_fraction"] > 0.9 and 0 < summary["max_deviation"] < 0.5


def _curve_trajectory(points: torch.Tensor, tangents: torch.Tensor, features: int = 12, seed: int = 0):
    """States along a curve given in its own low-dimensional coordinates, embedded by a random orthonormal map and
    offset, with denoised values that make `tangents` the ODE direction `x - D` at every point but the last."""
    generator = torch.Generator().manual_seed(seed)
    embed, _ = torch.linalg.qr(torch.randn(features, points.shape[-1], generator=generator, dtype=torch.float64))
    offset = torch.randn(features, generator=generator, dtype=torch.float64)
    states = points @ embed.T + offset
    denoised = states[:-1] - tangents[:-1] @ embed.T
    return states[:, None], denoised[:, None]  # (T, 1, F) and (T - 1, 1, F)


def test_equal_rotation_spaces_steps_evenly_in_angle_on_a_planar_arc():
    from diffusers_gits.geometry import equal_rotation_positions, frame_rotation

    # A circular arc visited at unevenly spaced angles: the tangent turns by exactly the angle travelled.
    angles = torch.tensor(np.cumsum([0.0, 0.02, 0.05, 0.3, 0.4, 0.1, 0.02, 0.01, 0.2, 0.05]), dtype=torch.float64)
    points = torch.stack([angles.cos(), angles.sin()], dim=-1) * 3.0
    tangents = torch.stack([-angles.sin(), angles.cos()], dim=-1)
    states, denoised = _curve_trajectory(points, tangents)
    rotation = frame_rotation(states, denoised)
    np.testing.assert_allclose(rotation, np.diff(angles.numpy())[:-1], atol=1e-7)  # no torsion on a plane
    for num_steps in (2, 3, 5):
        positions = equal_rotation_positions(rotation, num_steps)
        assert positions[0] == 0 and np.all(np.diff(positions) > 0)
        reached = np.interp(positions, np.arange(len(angles) - 1), angles[:-1].numpy())
        span = float(angles[-2] - angles[0])
        np.testing.assert_allclose(reached, span * np.arange(num_steps) / num_steps, atol=1e-6)


def test_a_helix_turns_its_frame_at_a_constant_rate():
    """Curvature and torsion both count: a circular helix visited at a uniform parameter turns its Frenet frame by the
    same angle on every step (a planar circle with the same curvature turns less), so TORS spaces it evenly."""
    from diffusers_gits.geometry import equal_rotation_positions, frame_rotation

    s = torch.linspace(0, 4.0, 21, dtype=torch.float64)
    helix = torch.stack([s.cos(), s.sin(), 0.8 * s], dim=-1)
    helix_tangents = torch.stack([-s.sin(), s.cos(), torch.full_like(s, 0.8)], dim=-1)
    rotation = frame_rotation(*_curve_trajectory(helix, helix_tangents))
    assert rotation[1:].std() < 1e-3 * rotation[1:].mean()  # the first segment has no previous plane
    circle = torch.stack([s.cos(), s.sin(), torch.zeros_like(s)], dim=-1)
    circle_tangents = torch.stack([-s.sin(), s.cos(), torch.zeros_like(s)], dim=-1)
    planar = frame_rotation(*_curve_trajectory(circle, circle_tangents))
    assert np.all(rotation[1:] > planar[1:] * 0.5) and rotation[1:].mean() > 0
    positions = equal_rotation_positions(rotation[1:], 4)
    np.testing.assert_allclose(np.diff(positions), np.diff(positions)[0], rtol=1e-6)


def test_equal_rotation_positions_refuses_bad_input():
    from diffusers_gits.geometry import equal_rotation_positions

    with pytest.raises(ValueError, match="num_steps"):
        equal_rotation_positions(np.ones(4), 0)
    with pytest.raises(ValueError, match="rotation"):
        equal_rotation_positions(np.array([0.1, -0.2]), 2)
