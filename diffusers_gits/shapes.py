"""Coloured shapes with their captions: the data of the embedded text-to-image models, and the referee that reads them.

Every image is drawn procedurally from a seed (no download): one axis-aligned circle, square or upright triangle in
one colour on a plain background of another, anti-aliased by 4x supersampling. Its caption names what is drawn:
"a red circle on a blue background", or the shorter "a red circle". Because the images are this simple, what a
generated image shows can be read back exactly (`read_image`): the background is the colour of the border, the shape
is what differs from it, and the shape's class follows from which corners of its bounding box it fills (a square all
four, an upright triangle the bottom two, a circle none). That makes prompt adherence a number (`prompt_adherence`), with no learned judge.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


SHAPES = ("circle", "square", "triangle")
#: RGB in [0, 1]; far apart, so that the nearest palette colour names a pixel unambiguously.
PALETTE = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.12, 0.70, 0.20),
    "blue": (0.12, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
}
SHAPE_COLOURS = ("red", "green", "blue", "yellow", "white")
BACKGROUNDS = ("black", "red", "green", "blue", "yellow", "white")
#: Half-extent of a shape in pixels of a 32-pixel image (scaled with the image size).
MIN_HALF, MAX_HALF = 5.0, 11.0
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """What one image shows: shape, colour, background, centre and half-extent (pixels), and whether its caption
    names the background."""

    shape: str
    colour: str
    background: str
    cx: float
    cy: float
    half: float
    names_background: bool = True

    @property
    def prompt(self) -> str:
        if self.names_background:
            return f"a {self.colour} {self.shape} on a {self.background} background"
        return f"a {self.colour} {self.shape}"


def random_spec(rng: np.random.Generator, size: int = 32, short_caption_rate: float = 0.25) -> ShapeSpec:
    """A random `ShapeSpec` whose shape fits inside the image with a one-pixel margin."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = SHAPE_COLOURS[rng.integers(len(SHAPE_COLOURS))]
    backgrounds = [b for b in BACKGROUNDS if b != colour]
    background = backgrounds[rng.integers(len(backgrounds))]
    scale = size / 32
    half = float(rng.uniform(MIN_HALF, MAX_HALF)) * scale
    cx, cy = (float(rng.uniform(half + scale, size - half - scale)) for _ in range(2))
    return ShapeSpec(shape, colour, background, cx, cy, half, bool(rng.random() >= short_caption_rate))


def _coverage(spec: ShapeSpec, size: int) -> np.ndarray:
    """Fraction of each pixel the shape covers, from a `SUPERSAMPLE`-times finer grid of point tests."""
    fine = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(fine, fine)
    dx, dy = x - spec.cx, y - spec.cy
    if spec.shape == "circle":
        inside = dx**2 + dy**2 <= spec.half**2
    elif spec.shape == "square":
        inside = (np.abs(dx) <= spec.half) & (np.abs(dy) <= spec.half)
    elif spec.shape == "triangle":  # apex up at cy - half, base of width 2 * half at cy + half
        inside = (dy <= spec.half) & (np.abs(dx) <= (dy + spec.half) / 2)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {spec.shape!r}")
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def render(spec: ShapeSpec, size: int = 32) -> np.ndarray:
    """The image of `spec`: float32 array `(size, size, 3)` in [0, 1]."""
    alpha = _coverage(spec, size)[..., None]
    foreground = np.asarray(PALETTE[spec.colour], dtype=np.float64)
    background = np.asarray(PALETTE[spec.background], dtype=np.float64)
    return (background * (1 - alpha) + foreground * alpha).astype(np.float32)


def shapes_dataset(num: int, seed: int, size: int = 32) -> tuple[torch.Tensor, list[ShapeSpec]]:
    """`num` images (`(num, 3, size, size)`, float32 in [-1, 1]) and their specs, drawn from `seed` alone."""
    rng = np.random.default_rng(seed)
    specs = [random_spec(rng, size) for _ in range(num)]
    images = np.stack([render(spec, size) for spec in specs]).transpose(0, 3, 1, 2)
    return torch.from_numpy(images) * 2 - 1, specs


def parse_prompt(prompt: str) -> dict[str, str]:
    """The attributes a caption names: `{"shape", "colour"}` and `"background"` when it names one.

    Raises:
        ValueError: for a prompt that is not of the form "a COLOUR SHAPE" or "a COLOUR SHAPE on a COLOUR background".
    """
    words = prompt.lower().strip().split()
    if len(words) in (3, 7) and words[0] == "a" and words[1] in SHAPE_COLOURS and words[2] in SHAPES:
        attributes = {"colour": words[1], "shape": words[2]}
        if len(words) == 3:
            return attributes
        if words[3:5] == ["on", "a"] and words[5] in BACKGROUNDS and words[6] == "background":
            return {**attributes, "background": words[5]}
    raise ValueError(
        f"prompt {prompt!r} is not a shapes caption: expected 'a COLOUR SHAPE' or 'a COLOUR SHAPE on a COLOUR "
        f"background' with COLOUR in {SHAPE_COLOURS} (background: {BACKGROUNDS}) and SHAPE in {SHAPES}"
    )


def _nearest_colour(rgb: np.ndarray, names: Sequence[str]) -> str:
    distances = [np.linalg.norm(rgb - np.asarray(PALETTE[name])) for name in names]
    return names[int(np.argmin(distances))]


def _as_hwc(image) -> np.ndarray:
    """A PIL image, an `(H, W, 3)` array in [0, 1] or a `(3, H, W)` tensor in [-1, 1] as an `(H, W, 3)` array in
    [0, 1]."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"a tensor image must have shape (3, H, W) in [-1, 1], got {tuple(image.shape)}")
        return ((image.detach().float().cpu().permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)
    array = np.asarray(image)
    if array.dtype == np.uint8:
        array = array.astype(np.float64) / 255
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"an image must be RGB of shape (H, W, 3), got {array.shape}")
    return array.astype(np.float64).clip(0, 1)


def read_image(image) -> dict[str, str | None]:
    """Read back what an image shows: `{"shape", "colour", "background"}` (shape and colour `None` if no shape is
    visible).

    The background is the median of the one-pixel border (named by the nearest palette colour). Pixels further than
    0.3 (RGB distance) from it are the shape; its colour is their median (named likewise); each pixel's coverage is
    its projection on the background -> shape colour line. The class follows from the corners of the bounding box of
    the rows and columns with two or more half-covered pixels (each corner patch a quarter of the box's height and width): a square fills
    all four, an upright triangle the bottom two only (top < 0.15, bottom > 0.5), a circle none fully (a square needs
    both pairs above 0.65). Corners, not the share of the box the shape fills, so that a square with slightly bowed
    sides is still a square, as a person would read it.
    """
    pixels = _as_hwc(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    bg = np.median(border, axis=0)  # the colour as drawn: off-palette shades still separate from the shape
    background = _nearest_colour(bg, BACKGROUNDS)
    differs = np.linalg.norm(pixels - bg, axis=-1) > 0.3
    if differs.sum() < 4:
        return {"shape": None, "colour": None, "background": background}
    fg = np.median(pixels[differs], axis=0)
    colour = _nearest_colour(fg, list(PALETTE))
    direction = fg - bg
    coverage = (((pixels - bg) @ direction) / (direction @ direction)).clip(0, 1)
    half = coverage > 0.5  # rows and columns with one stray pixel are noise, not shape
    rows, cols = np.nonzero(half.sum(axis=1) >= 2)[0], np.nonzero(half.sum(axis=0) >= 2)[0]
    if len(rows) < 2 or len(cols) < 2:
        return {"shape": None, "colour": colour, "background": background}
    box = coverage[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    ph, pw = max(1, round(box.shape[0] / 4)), max(1, round(box.shape[1] / 4))
    top = (box[:ph, :pw].mean() + box[:ph, -pw:].mean()) / 2
    bottom = (box[-ph:, :pw].mean() + box[-ph:, -pw:].mean()) / 2
    shape = "triangle" if top < 0.15 and bottom > 0.5 else "square" if min(top, bottom) > 0.65 else "circle"
    return {"shape": shape, "colour": colour, "background": background}


def prompt_adherence(images: Sequence, prompts: Sequence[str]) -> dict[str, float]:
    """How often the images show what their prompts ask for.

    Args:
        images: PIL images, `(H, W, 3)` arrays in [0, 1] or `(3, H, W)` tensors in [-1, 1].
        prompts: one shapes caption per image (see `parse_prompt`).

    Returns:
        `{"all", "shape", "colour", "background"}`: the fraction of images matching every attribute their prompt
        names, and each attribute's own match rate (`background` over the prompts that name one; NaN if none does).
    """
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; pass one prompt per image")
    if len(images) == 0:
        raise ValueError("no images to score")
    hits = {"all": [], "shape": [], "colour": [], "background": []}
    for image, prompt in zip(images, prompts):
        asked, seen = parse_prompt(prompt), read_image(image)
        matched = {key: seen[key] == value for key, value in asked.items()}
        for key, value in matched.items():
            hits[key].append(value)
        hits["all"].append(all(matched.values()))
    return {key: float(np.mean(values)) if values else float("nan") for key, values in hits.items()}


def prompts_grid(num: int, seed: int) -> list[str]:
    """`num` captions drawn like the training captions (for benchmarks and the demo), from `seed` alone."""
    rng = np.random.default_rng(seed)
    return [random_spec(rng).prompt for _ in range(num)]


def images_for_prompts(prompts: Sequence[str], seed: int, size: int = 32) -> np.ndarray:
    """One image of the training distribution per caption (`(n, size, size, 3)` in [0, 1]): what the caption names,
    at a random size and place, on a random background where it names none; the real data a generated set is
    compared with."""
    rng = np.random.default_rng(seed)
    images = []
    for prompt in prompts:
        asked = parse_prompt(prompt)
        spec = random_spec(rng, size)
        background = asked.get("background")
        if background is None or background == asked["colour"]:
            choices = [b for b in BACKGROUNDS if b != asked["colour"]]
            background = background if background is not None else choices[rng.integers(len(choices))]
        spec = ShapeSpec(
            asked["shape"], asked["colour"], background, spec.cx, spec.cy, spec.half, "background" in asked
        )
        images.append(render(spec, size))
    return np.stack(images)
