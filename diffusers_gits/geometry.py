"""Trajectory geometry: the regularity of deterministic sampling trajectories that GITS relies on, measured.

Chen et al. ("A Geometric Perspective on Diffusion Models"; "On the Trajectory Regularity of ODE-based Diffusion
Sampling", ICML 2024; "Geometric Regularity in Deterministic Sampling Dynamics", 2025) observe that each sampling
trajectory stays close to the straight line (the chord) from its start to its end, that its deviation from the chord
has the same one-hump "boomerang" profile for every trajectory of a model, that it deviates within a subspace of a
few dimensions, and that the denoising trajectory (the x0 estimates) approaches the final sample faster than the
sampling trajectory does. Everything here is pure math on recorded trajectories: `states` (T, B, ...) are the solver
states along a schedule (the last one the final sample), `denoised` (T - 1, B, ...) the x0 estimates at all but the
last. Trajectories are compared in float64.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _flat(values: torch.Tensor) -> torch.Tensor:
    return values.detach().to("cpu", torch.float64).flatten(2)


def _check(states: torch.Tensor, denoised: torch.Tensor | None = None) -> None:
    if states.ndim < 3 or states.shape[0] < 3:
        raise ValueError(f"states must be (T >= 3, B, ...) trajectories, got shape {tuple(states.shape)}")
    if denoised is not None and (denoised.shape[0] != states.shape[0] - 1 or denoised.shape[1:] != states.shape[1:]):
        raise ValueError(
            f"denoised must be (T - 1, B, ...) = {(states.shape[0] - 1, *states.shape[1:])}, got {tuple(denoised.shape)}"
        )


def perpendicular_part(offset: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The part of `offset` (..., F) perpendicular to the unit vectors `direction` (broadcast): its deviation from
    the line along `direction` through its origin."""
    return offset - (offset * direction).sum(-1, keepdim=True) * direction


def chord_deviations(states: torch.Tensor) -> torch.Tensor:
    """(T, B, F) vectors from each state to its nearest point on the line through the trajectory's start and end."""
    _check(states)
    x = _flat(states)
    start, end = x[0], x[-1]
    direction = end - start
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return perpendicular_part(x - start, direction)


def deviation_profile(states: torch.Tensor) -> torch.Tensor:
    """(T, B): each state's distance from the chord, as a fraction of the chord's length (0 at both ends)."""
    chord = (_flat(states)[-1] - _flat(states)[0]).norm(dim=-1)
    return chord_deviations(states).norm(dim=-1) / chord


def explained_variance(vectors: torch.Tensor, k: int = 3, center: bool = False) -> torch.Tensor:
    """(B, k): the fraction of each trajectory's squared norm (of its `vectors`, (T, B, F)) that its top 1..k principal
    directions hold, cumulative. `center` subtracts the trajectory's mean point first (PCA of the points); 1 where
    there is nothing to explain (a squared norm below 1e-20: pass vectors on a scale of about 1, e.g. as fractions
    of the chord, so that this is rounding)."""
    v = vectors.to(torch.float64).transpose(0, 1)  # (B, T, F)
    if center:
        v = v - v.mean(dim=1, keepdim=True)
    # Squared singular values from the (T, T) Gram matrix: for image-sized F that is far cheaper than an SVD.
    singular = torch.linalg.eigvalsh(v @ v.transpose(1, 2)).flip(-1).clamp_min(0)  # (B, T), descending
    total = singular.sum(-1, keepdim=True)
    top = torch.nn.functional.pad(singular, (0, max(0, k - singular.shape[-1])))[:, :k].cumsum(-1)
    return torch.where(total > 1e-20, top / total.clamp_min(1e-300), torch.ones_like(top))


def step_angles(states: torch.Tensor) -> torch.Tensor:
    """(T - 2, B): the angle in degrees between consecutive steps x_{t+1} - x_t of each trajectory."""
    _check(states)
    steps = torch.diff(_flat(states), dim=0)
    cosine = torch.nn.functional.cosine_similarity(steps[:-1], steps[1:], dim=-1)
    return torch.rad2deg(torch.arccos(cosine.clamp(-1, 1)))


def frame_rotation(states: torch.Tensor, denoised: torch.Tensor, dims: int = 3, min_angle: float = 1e-3) -> np.ndarray:
    """(T - 2,): how far each trajectory's Frenet frame turns between consecutive points, in radians, averaged over
    the trajectories (the rotation measure of TORS, Zhou, Chen et al., arXiv 2603.00763).

    Each trajectory is projected onto the `dims` principal directions of its centred points (where, by the regularity
    above, it lives). Its tangent at point i is the ODE's direction `x_i - D(x_i)` (exact at every point with a
    denoised value, so the last point, sigma = 0, has none). Between consecutive tangents the frame turns by the
    curvature angle theta (between the tangents) and the torsion angle phi (between the osculating planes
    span(t_{i-1}, t_i) and span(t_i, t_{i+1}), which share t_i; counted only where both turns exceed `min_angle`,
    since a straight stretch has no plane); the total rotation is sqrt(theta^2 + phi^2), the discrete magnitude of
    the Darboux vector.
    """
    _check(states, denoised)
    # One trajectory at a time in float64: a batch of Flux-sized latents at once would take gigabytes.
    tangents = torch.stack(
        [_projected_tangents(states[:, b], denoised[:, b], dims) for b in range(states.shape[1])], 1
    )
    cosine = (tangents[:-1] * tangents[1:]).sum(-1).clamp(-1, 1)
    theta = torch.arccos(cosine)  # (T - 2, B): segment i turns from t_i to t_{i+1}
    # The turn's direction within the plane orthogonal to t_i, forwards (towards t_{i+1}) and backwards (t_{i-1}).
    forward = tangents[1:] - cosine[..., None] * tangents[:-1]
    backward = tangents[:-1] - cosine[..., None] * tangents[1:]
    forward = forward / forward.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    backward = backward / backward.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    phi = torch.zeros_like(theta)
    # Planes i - 1 and i share t_i: the angle between the lines of backward[i - 1] and forward[i], both orthogonal to it.
    plane_cosine = (backward[:-1] * forward[1:]).sum(-1).abs().clamp(0, 1)
    defined = (theta[:-1] > min_angle) & (theta[1:] > min_angle)
    phi[1:] = torch.where(defined, torch.arccos(plane_cosine), torch.zeros_like(plane_cosine))
    return (theta**2 + phi**2).sqrt().mean(1).numpy()


def _projected_tangents(states: torch.Tensor, denoised: torch.Tensor, dims: int) -> torch.Tensor:
    """(T - 1, dims) unit tangents `x - D(x)` of one trajectory ((T, ...) states, (T - 1, ...) denoised values) in the
    coordinates of its top `dims` principal directions."""
    x = states.detach().to("cpu", torch.float64).flatten(1)
    d = denoised.detach().to("cpu", torch.float64).flatten(1)
    centred = x - x.mean(0, keepdim=True)
    # The principal directions from the (T, T) Gram matrix, as in `explained_variance`.
    values, vectors = torch.linalg.eigh(centred @ centred.T)
    values, vectors = values[-dims:], vectors[:, -dims:]
    # Directions the trajectory does not extend in (a planar one has two) are dropped, not amplified from rounding.
    kept = values > 1e-12 * values[-1].clamp_min(1e-300)
    top = torch.where(kept[None, :], vectors / values[None, :].clamp_min(1e-300).sqrt(), 0.0)
    tangents = (x[:-1] - d) @ (centred.T @ top)  # the basis rows top^T centred are orthonormal
    return tangents / tangents.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def equal_rotation_positions(rotation: np.ndarray, num_steps: int) -> np.ndarray:
    """Fractional point indices 0 = p_0 < p_1 < ... < p_{N-1} where the cumulative `rotation` (per segment between
    consecutive points, as from `frame_rotation`) reaches k / N of its total, linear within a segment: the N-step
    schedule on which every step turns the frame equally far (TORS). The last step runs from p_{N-1} to the end."""
    rotation = np.asarray(rotation, dtype=np.float64)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if rotation.ndim != 1 or len(rotation) < 1 or not np.all(np.isfinite(rotation)) or np.any(rotation < 0):
        raise ValueError(f"rotation must be a 1-D array of finite angles >= 0, got {rotation}")
    # A small floor keeps the cumulative curve strictly increasing, so straight stretches are crossed evenly.
    cumulative = np.concatenate([[0.0], np.cumsum(rotation + 1e-9 * max(rotation.sum(), 1e-9))])
    targets = cumulative[-1] * np.arange(num_steps) / num_steps
    return np.interp(targets, cumulative, np.arange(len(cumulative), dtype=np.float64))


def convergence(states: torch.Tensor, denoised: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T - 1, B) each: the distance to the final sample of the sampling trajectory (the states) and of the denoising
    trajectory (the x0 estimates), as fractions of the start's distance to it."""
    _check(states, denoised)
    x, d = _flat(states), _flat(denoised)
    final = x[-1]
    scale = (x[0] - final).norm(dim=-1)
    return (x[:-1] - final).norm(dim=-1) / scale, (d - final).norm(dim=-1) / scale


def profile_similarity(profiles: torch.Tensor) -> torch.Tensor:
    """(B,): cosine similarity of each trajectory's deviation profile (T, B) to the mean profile: 1 when every
    trajectory has the same boomerang shape."""
    mean = profiles.mean(dim=1, keepdim=True)
    return torch.nn.functional.cosine_similarity(profiles, mean.expand_as(profiles), dim=0)


def per_trajectory(states: torch.Tensor, denoised: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The per-trajectory numbers `summarize` aggregates, for one batch (so that batches can be measured as they
    come and aggregated with `aggregate`): deviation `profiles` (T, B), `deviation_pca` and `trajectory_pca` (B, 3),
    `step_angle` (B,) and, with `denoised`, `denoising_closer` (B,)."""
    x = _flat(states)
    chord = (x[-1] - x[0]).norm(dim=-1)[None, :, None]
    numbers = {
        "profiles": deviation_profile(states),
        "deviation_pca": explained_variance(chord_deviations(states) / chord),
        "trajectory_pca": explained_variance(x / chord, center=True),
        "step_angle": step_angles(states).mean(0),
    }
    if denoised is not None:
        sampling, denoising = convergence(states, denoised)
        numbers["denoising_closer"] = (denoising[1:] < sampling[1:]).double().mean(0)
    return numbers


def aggregate(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """The regularity numbers of all trajectories of `parts` (from `per_trajectory`), as plain JSON values.

    - `deviation_pca_top{1,2,3}`: mean fraction of the deviation from the chord that the top 1/2/3 principal
      directions hold (near 1: the trajectory deviates within a subspace of that many dimensions).
    - `trajectory_pca_top{1,2,3}`: the same for the trajectory's points, centred (1 component for a straight line).
    - `max_deviation` / `max_deviation_spread`: the boomerang's height as a fraction of the chord (mean over
      trajectories) and its standard deviation across them; `peak_position`: where the mean profile peaks (fraction
      of the steps).
    - `profile_similarity`: mean cosine similarity of each profile to the mean one; `regularity_score` is its minimum
      over trajectories (1 = every trajectory has the same boomerang shape, which is why one schedule serves all).
    - `mean_step_angle_deg`: mean angle between consecutive steps.
    - with `denoised`: `denoising_closer_fraction`, the fraction of interior (step, trajectory) pairs where the x0
      estimate is closer to the final sample than the state is.
    """
    numbers = {key: torch.cat([part[key] for part in parts], dim=1 if key == "profiles" else 0) for key in parts[0]}
    profiles = numbers["profiles"]
    heights = profiles.max(dim=0).values
    similarity = profile_similarity(profiles)
    mean_profile = profiles.mean(dim=1)
    deviation_pca, trajectory_pca = numbers["deviation_pca"].mean(0), numbers["trajectory_pca"].mean(0)
    summary = {
        "num_trajectories": int(profiles.shape[1]),
        "num_steps": int(profiles.shape[0] - 1),
        **{f"deviation_pca_top{k + 1}": float(deviation_pca[k]) for k in range(3)},
        **{f"trajectory_pca_top{k + 1}": float(trajectory_pca[k]) for k in range(3)},
        "max_deviation": float(heights.mean()),
        "max_deviation_spread": float(heights.std()) if len(heights) > 1 else 0.0,
        "peak_position": float(mean_profile.argmax()) / (len(mean_profile) - 1),
        "profile_similarity": float(similarity.mean()),
        "regularity_score": float(similarity.min()),
        "mean_step_angle_deg": float(numbers["step_angle"].mean()),
    }
    if "denoising_closer" in numbers:
        summary["denoising_closer_fraction"] = float(numbers["denoising_closer"].mean())
    return summary


def summarize(states: torch.Tensor, denoised: torch.Tensor | None = None) -> dict[str, Any]:
    """The regularity numbers (`aggregate`) of one batch of trajectories."""
    return aggregate([per_trajectory(states, denoised)])


def mean_shift(points: torch.Tensor, x: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """One Gaussian mean-shift step: the softmax(-|x - p|^2 / 2h^2)-weighted mean of `points` (N, D) for each row of
    `x` (B, D)."""
    weights = torch.softmax(-0.5 * torch.cdist(x.to(torch.float64), points.to(torch.float64)) ** 2 / bandwidth**2, 1)
    return weights @ points.to(torch.float64)


def monotone_fraction(values: np.ndarray | torch.Tensor) -> float:
    """The fraction of consecutive pairs (along axis 0) where `values` rises."""
    values = torch.as_tensor(values, dtype=torch.float64)
    return float((torch.diff(values, dim=0) > 0).double().mean())
