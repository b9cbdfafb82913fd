"""PNG output: sample grids and error plots. Imports matplotlib lazily so the core package does not need it."""

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


def _save_log_plot(
    lines: dict[str, tuple[list, list]], path: str | Path, xlabel: str, ylabel: str, title: str
) -> Path:
    """One line per entry (x values, y values) on a log y axis, written as PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, y) in lines.items():
        ax.plot(x, y, marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
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
