"""PNG output: sample grids and error plots. Imports matplotlib lazily so the core package does not need it."""

import importlib.util
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _to_uint8(images: torch.Tensor | Sequence[Image.Image]) -> np.ndarray:
    """Images in [-1, 1] (tensor, NCHW) or PIL images -> uint8 array (N, H, W, C)."""
    if isinstance(images, torch.Tensor):
        array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return array.permute(0, 2, 3, 1).cpu().numpy()
    return np.stack([np.asarray(image.convert("RGB")) for image in images])


def image_grid(images: torch.Tensor | Sequence[Image.Image], columns: int = 8, scale: int = 1) -> Image.Image:
    """Tile images into one PIL image, `columns` per row, each upscaled `scale` times (nearest neighbour)."""
    array = _to_uint8(images)
    n, h, w, c = array.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 255, dtype=np.uint8)
    for k in range(n):
        r, col = divmod(k, columns)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = array[k]
    grid = Image.fromarray(canvas.squeeze(-1) if c == 1 else canvas)
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST) if scale > 1 else grid


def save_image_grid(images: torch.Tensor | Sequence[Image.Image], path: str | Path, columns: int = 8, scale: int = 4):
    """Write `image_grid(images, columns, scale)` to `path` as PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, columns=columns, scale=scale).save(path)
    return path


#: Characters per line of a plot's title: what fits the 6-inch-wide figure at the default font size.
TITLE_WIDTH = 60


def _save_log_plot(
    lines: dict[str, tuple[list, list]], path: str | Path, xlabel: str, ylabel: str, title: str
) -> Path:
    """One line per entry (x values, y values) on a log y axis, written as PNG to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure(figsize=(6, 4))
    ax = fig.subplots()
    for label, (x, y) in lines.items():
        ax.plot(x, y, marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, TITLE_WIDTH))  # a long title on one line runs off the figure
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def save_error_plot(errors: dict[str, dict[int, float]], path: str | Path, title: str) -> Path:
    """Plot error against NFE, one line per schedule, log scale; write PNG to `path`."""
    lines = {name: (sorted(per_nfe), [per_nfe[n] for n in sorted(per_nfe)]) for name, per_nfe in errors.items()}
    return _save_log_plot(lines, path, "NFE (model calls)", "RMSE to reference", title)


def save_schedule_plot(schedules: dict[int, list[float]], path: str | Path) -> Path:
    """Plot each schedule's sigmas (log scale) against its step index; write PNG to `path`."""
    lines = {}
    for steps, sigmas in sorted(schedules.items()):
        positive = [s for s in sigmas if s > 0]
        lines[f"{steps} steps"] = (list(range(len(positive))), positive)
    return _save_log_plot(lines, path, "step", "sigma (the last step goes to 0)", "GITS schedules")


def plots_available() -> bool:
    """Whether matplotlib (an optional dependency, the `plots` extra) is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def _figure(figsize: tuple[float, float]):
    """A matplotlib `Figure` drawn by the Agg canvas: no pyplot, so the caller's backend (a notebook's) is untouched."""
    if not plots_available():
        raise ImportError("plots need matplotlib: pip install 'diffusers-gits[plots]'")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_trajectory_projections(states: torch.Tensor, path: str | Path, max_trajectories: int = 16) -> Path:
    """Each trajectory (states (T, B, ...)) in its own frame: the position along its chord (0 at the start, 1 at the
    end) against its deviation on its top two principal directions, as fractions of the chord; 2D and 3D panels."""
    from .geometry import chord_deviations

    x = states.detach().to("cpu", torch.float64).flatten(2)[:, :max_trajectories]
    chord = x[-1] - x[0]
    length = chord.norm(dim=-1)
    along = ((x - x[0]) * chord).sum(-1) / length**2  # (T, B)
    deviation = chord_deviations(states)[:, :max_trajectories]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure(figsize=(10, 4.5))
    flat, solid = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2, projection="3d")
    for b in range(x.shape[1]):
        _, _, vh = torch.linalg.svd(deviation[:, b], full_matrices=False)
        pcs = (deviation[:, b] @ vh[:2].T) / length[b]  # (T, 2)
        pcs = pcs * torch.sign(pcs[pcs[:, 0].abs().argmax(), 0])  # the hump upwards
        flat.plot(along[:, b], pcs[:, 0], alpha=0.6)
        solid.plot(along[:, b].numpy(), pcs[:, 0].numpy(), pcs[:, 1].numpy(), alpha=0.6)
    flat.set_xlabel("position along the chord (start 0, end 1)")
    flat.set_ylabel("deviation on PC1 / chord length")
    flat.set_title("trajectories projected on their chord and PC1")
    solid.set_xlabel("along chord")
    solid.set_ylabel("PC1")
    solid.set_zlabel("PC2")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def save_deviation_profiles(profiles: torch.Tensor, path: str | Path) -> Path:
    """Each trajectory's deviation from its chord (profiles (T, B), fractions of the chord) against the fraction of
    steps taken, with the mean profile."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = np.linspace(0, 1, profiles.shape[0])
    fig = _figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(steps, profiles.numpy(), color="tab:blue", alpha=0.15, linewidth=0.8)
    ax.plot(steps, profiles.mean(1).numpy(), color="black", linewidth=2, label="mean")
    ax.set_xlabel("fraction of the steps")
    ax.set_ylabel("distance from the chord / chord length")
    ax.set_title("deviation profiles (the boomerang)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def save_convergence(sampling: torch.Tensor, denoising: torch.Tensor, path: str | Path) -> Path:
    """Mean distance to the final sample of the sampling and the denoising trajectory ((T - 1, B) each, fractions of
    the start's distance) against the fraction of steps taken, log scale."""
    steps = list(np.linspace(0, 1, sampling.shape[0] + 1)[:-1])
    lines = {
        "sampling trajectory (states)": (steps, sampling.mean(1).tolist()),
        "denoising trajectory (x0 estimates)": (steps, denoising.mean(1).clamp_min(1e-6).tolist()),
    }
    return _save_log_plot(
        lines, path, "fraction of the steps", "distance to the final sample (relative)", "convergence"
    )


def save_labelled_grid(
    rows: dict[str, np.ndarray | Sequence[Image.Image]], column_labels: Sequence[str], path: str | Path, title: str
) -> Path:
    """Images in a labelled table, written as PNG to `path`.

    Args:
        rows: `{row label: images}`, the images as PIL images or an `(N, H, W, 3)` array in [0, 1], the same number
            in every row.
        column_labels: one label per column (wrapped to fit).
        path: the PNG to write.
        title: the figure's title.
    """
    import textwrap

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = len(column_labels)
    fig = _figure(figsize=(2.2 + 1.25 * columns, 0.6 + 1.3 * len(rows)))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        if len(images) != columns:
            raise ValueError(f"row {label!r} has {len(images)} images for {columns} columns")
        for c in range(columns):
            ax = axes[r][c]
            ax.imshow(np.asarray(images[c]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(textwrap.fill(column_labels[c], 14), fontsize=7)
        axes[r][0].set_ylabel(textwrap.fill(label, 18), fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
