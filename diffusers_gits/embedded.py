"""The models that ship inside the package, loadable with no network.

- `"sd"`: `shapes-sd`, a `StableDiffusionPipeline` trained here on coloured shapes (32x32 RGB; epsilon prediction on
  Stable Diffusion's scaled-linear betas, SD1.5's `PNDMScheduler` config);
- `"sd3"`: `shapes-sd3`, a `StableDiffusion3Pipeline` trained on the same data (rectified flow, SD3's
  `FlowMatchEulerDiscreteScheduler(shift=3.0)`);
- `"digits"`: an unconditional `DDPMPipeline` on scikit-learn's digits (16x16 grey, SD's noise schedule), the fast
  model of the unit tests and the VP benchmarks.

`examples/train_shapes_models.py` and `examples/train_default_model.py` train them; their prompts are described in
`diffusers_gits.shapes`.
"""

from importlib import resources
from pathlib import Path
from typing import Literal


EmbeddedModel = Literal["sd", "sd3", "digits"]
FOLDERS: dict[str, str] = {
    "sd": "embedded_models/shapes-sd",
    "sd3": "embedded_models/shapes-sd3",
    "digits": "default_model",
}
#: The classifier-free guidance scale the shapes models are sampled with in the demo, benchmarks and tests.
GUIDANCE_SCALE: dict[str, float] = {"sd": 5.0, "sd3": 5.0}


def embedded_model_path(name: EmbeddedModel) -> Path:
    """The folder of an embedded model (a diffusers pipeline folder: `model_index.json` and one folder a component)."""
    if name not in FOLDERS:
        raise ValueError(f"embedded model {name!r} does not exist; choose one of {sorted(FOLDERS)}")
    return Path(str(resources.files("diffusers_gits").joinpath(FOLDERS[name])))


def load_embedded_pipeline(name: EmbeddedModel):
    """An embedded model as its diffusers pipeline (`StableDiffusionPipeline`, `StableDiffusion3Pipeline` or
    `DDPMPipeline`), loaded from the package with no network, on the CPU in float32, its progress bar off."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    path = embedded_model_path(name)
    diffusers_logging.disable_progress_bar()  # the loading bar only; the pipeline's own bar is configured below
    try:
        pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    finally:
        diffusers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe
