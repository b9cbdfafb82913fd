"""`analyze`: record sampling and denoising trajectories through any supported pipeline and measure their geometry.

The pipeline runs the calibration's teacher (iPNDM on the model family's grid) under the calibration's recorder, so
the trajectories are the ones a calibration sees; `diffusers_gits.geometry` turns them into numbers and
`diffusers_gits.plotting` into PNGs.
"""

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .calibration.execution import Executor, Job, Progress, process_state
from .calibration.recorder import batch_key, open_pipeline
from .geometry import convergence, deviation_profile, summarize
from .schedules import check_step_count
from .solvers import SolverName


def record_trajectories(
    pipe,
    num_samples: int = 32,
    prompts: Sequence[str] | None = None,
    num_steps: int = 60,
    solver: SolverName = "ipndm",
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    **pipe_kwargs,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """States (T, B, ...) and x0 estimates (T - 1, B, ...) of `num_samples` trajectories, in the solvers' coordinates
    (sigma space for VP models, the flow path for flow models), on the family's grid of `num_steps` steps, and its
    sigmas."""
    check_step_count(num_steps, "num_steps")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 for a trajectory with a middle, got {num_steps}")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    runner, family, mu = open_pipeline(pipe, prompts, seed, batch_size, pipe_kwargs)
    sigmas = family.grid(num_steps)
    scheduler = family.scheduler(solver, {num_steps: sigmas})

    def run(batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        trajectory = runner.run(scheduler, batch, num_steps, keep_path=True)
        return torch.stack(trajectory.states), torch.stack(trajectory.denoised)

    jobs = [
        Job(f"trajectories/{batch_key(batch)}", len(batch) * num_steps, len(batch), functools.partial(run, batch))
        for batch in runner.batches(list(range(num_samples)))
    ]
    state = process_state(runner.device)
    bar = Progress(num_samples * num_steps, enabled=progress and state.is_main_process)
    try:
        results = Executor(state, progress=bar).map("trajectories", jobs)
    finally:
        bar.close()
    states = torch.cat([s for s, _ in results], dim=1)
    denoised = torch.cat([d for _, d in results], dim=1)
    return states, denoised, [float(s) for s in sigmas]


def analyze(
    pipe,
    num_samples: int = 32,
    prompts: Sequence[str] | None = None,
    num_steps: int = 60,
    batch_size: int = 16,
    seed: int = 0,
    output_dir: str | Path | None = None,
    progress: bool = True,
    **pipe_kwargs,
) -> dict[str, Any]:
    """Measure the trajectory regularity of `pipe` (see `diffusers_gits.geometry.summarize` for the numbers).

    Args:
        pipe: a diffusers pipeline of a family GITS supports.
        num_samples (`int`, defaults to 32): trajectories (noises `seed`-seeded as in calibration; prompts cycled).
        prompts: prompts cycled over the trajectories; `None` for unconditional pipelines.
        num_steps (`int`, defaults to 60): steps of the recorded trajectories (iPNDM on the family's grid).
        batch_size (`int`, defaults to 16): samples per pipeline call.
        seed (`int`, defaults to 0): seeds the noises.
        output_dir (`str` or `Path`, *optional*): where to write `trajectories.png` (2D / 3D projections on the top
            principal directions), `deviation_profiles.png` and `convergence.png`.
        progress (`bool`, defaults to `True`): show a progress bar.
        **pipe_kwargs: passed to every pipeline call (`guidance_scale`, `height`, `width`, ...).

    Returns:
        The summary numbers, with `sigmas` (the recorded schedule).
    """
    states, denoised, sigmas = record_trajectories(
        pipe, num_samples, prompts, num_steps, batch_size=batch_size, seed=seed, progress=progress, **pipe_kwargs
    )
    summary = {**summarize(states, denoised), "sigmas": sigmas}
    if output_dir is not None:
        from .plotting import save_convergence, save_deviation_profiles, save_trajectory_projections

        output_dir = Path(output_dir)
        save_trajectory_projections(states, output_dir / "trajectories.png")
        save_deviation_profiles(deviation_profile(states), output_dir / "deviation_profiles.png")
        save_convergence(*convergence(states, denoised), output_dir / "convergence.png")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few lines of text."""
    lines = [
        f"{summary['num_trajectories']} trajectories of {summary['num_steps']} steps",
        "deviation from the chord held by the top 1 / 2 / 3 principal directions: "
        + " / ".join(f"{summary[f'deviation_pca_top{k}']:.3f}" for k in (1, 2, 3)),
        "trajectory (centred) held by the top 1 / 2 / 3 principal directions: "
        + " / ".join(f"{summary[f'trajectory_pca_top{k}']:.4f}" for k in (1, 2, 3)),
        f"boomerang height: {summary['max_deviation']:.4f} of the chord (spread {summary['max_deviation_spread']:.4f}), "
        f"peak at {summary['peak_position']:.2f} of the steps",
        f"profile similarity to the mean profile: mean {summary['profile_similarity']:.4f}, "
        f"lowest {summary['regularity_score']:.4f} (the regularity score)",
        f"mean angle between consecutive steps: {summary['mean_step_angle_deg']:.2f} degrees",
    ]
    if "denoising_closer_fraction" in summary:
        lines.append(
            "x0 estimates closer to the final sample than the states: "
            f"{summary['denoising_closer_fraction']:.3f} of the (step, trajectory) pairs"
        )
    return "\n".join(lines)
