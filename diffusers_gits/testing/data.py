"""The real image data behind the embedded default model: scikit-learn's handwritten digits, no download needed."""

import torch


#: Digits 0..1499 train the default model; the rest are held out for the benchmark's distribution metric.
NUM_TRAIN_DIGITS = 1500


def digits_images(split: str = "train", size: int = 16) -> torch.Tensor:
    """Return scikit-learn's 8x8 digits upsampled to `size` x `size`, scaled to [-1, 1].

    Args:
        split (`str`, defaults to `"train"`): `"train"` (the first 1500 digits), `"test"` (the other 297) or `"all"`.
        size (`int`, defaults to 16): side length after bilinear upsampling.

    Returns:
        `torch.Tensor` of shape `(n, 1, size, size)`, float32.
    """
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images).float().unsqueeze(1) / 16.0
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return _split(images * 2 - 1, split)


def digits_labels(split: str = "train") -> torch.Tensor:
    """The digit (0-9) of each image `digits_images(split)` returns, as an int64 tensor of shape `(n,)`."""
    from sklearn.datasets import load_digits

    return _split(torch.from_numpy(load_digits().target).long(), split)


def _split(digits: torch.Tensor, split: str) -> torch.Tensor:
    """The rows of `digits` (all 1797, in scikit-learn's order) that make up `split`."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if split == "train":
        return digits[:NUM_TRAIN_DIGITS]
    if split == "test":
        return digits[NUM_TRAIN_DIGITS:]
    return digits
