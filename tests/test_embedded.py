"""The embedded text-to-image models: offline loading with stock diffusers classes, and GITS round trips on them."""

import numpy as np
import pytest
import torch

from diffusers_gits import GITSFlowMatchScheduler, GITSScheduler
from diffusers_gits.embedded import GUIDANCE_SCALE, embedded_model_path, load_embedded_pipeline


def test_sd_model_loads_offline_with_the_stock_class():
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(embedded_model_path("sd"), local_files_only=True)
    assert isinstance(pipe.scheduler, PNDMScheduler)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.unet.config.sample_size * 2 == 32
    assert pipe.tokenizer.tokenize("a red circle on a blue background") == [
        "a</w>", "red</w>", "circle</w>", "on</w>", "a</w>", "blue</w>", "background</w>",
    ]  # fmt: skip


def test_sd3_model_loads_offline_with_the_stock_class():
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(embedded_model_path("sd3"), local_files_only=True)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 3.0
    assert pipe.text_encoder_3 is not None and pipe.tokenizer_3 is not None


def test_unknown_embedded_model_is_refused():
    with pytest.raises(ValueError, match="'sdxl' does not exist"):
        embedded_model_path("sdxl")


@pytest.mark.parametrize("name", ["sd", "sd3"])
def test_prompt_turns_into_a_32px_rgb_image(name):
    pipe = load_embedded_pipeline(name)
    out = pipe(
        ["a red circle", "a blue square on a white background"],
        num_inference_steps=3,
        guidance_scale=GUIDANCE_SCALE[name],
        generator=[torch.Generator().manual_seed(i) for i in range(2)],
        output_type="np",
    ).images
    assert out.shape == (2, 32, 32, 3) and np.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("name, scheduler_class", [("sd", GITSScheduler), ("sd3", GITSFlowMatchScheduler)])
def test_calibrate_save_load_generate_round_trip(name, scheduler_class, tmp_path):
    pipe = load_embedded_pipeline(name)
    guidance = GUIDANCE_SCALE[name]
    calibrated = scheduler_class.from_calibration(
        pipe,
        [2, 3],
        prompts=["a red circle on a blue background", "a white triangle"],
        guidance_scale=guidance,
        num_warmup=6,
        batch_size=6,
        grid_size=13,
        progress=False,
        cache=False,
    )
    assert isinstance(calibrated, scheduler_class) and calibrated.calibrated_steps == [2, 3]
    calibrated.save_pretrained(tmp_path / "scheduler")
    loaded = scheduler_class.from_pretrained(tmp_path / "scheduler")
    for k in (2, 3):
        assert np.array_equal(loaded.schedule_for(k), calibrated.schedule_for(k))

    def generate(scheduler):
        pipe.scheduler = scheduler
        return pipe(
            "a green square on a black background",
            num_inference_steps=3,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        ).images

    # The loaded scheduler samples exactly as the calibrated one, and with the calibrated sigmas.
    assert torch.equal(generate(loaded), generate(calibrated))
    assert np.allclose(pipe.scheduler.sigmas.double().numpy(), calibrated.schedule_for(3), atol=1e-6)
