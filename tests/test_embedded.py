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


def test_the_embedded_models_fit_in_30_mb():
    from pathlib import Path

    package = Path(embedded_model_path("sd")).parent.parent
    files = [
        f for folder in ("embedded_models", "default_model") for f in (package / folder).rglob("*") if f.is_file()
    ]
    assert len(files) > 20 and sum(f.stat().st_size for f in files) <= 30_000_000


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


def _training_script():
    """examples/train_shapes_models.py, imported as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "train_shapes_models.py"
    spec = importlib.util.spec_from_file_location("train_shapes_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_flow_models_t5_gives_every_padding_token_the_same_output():
    """What lets the flow model's training collapse SD3's 256-token T5 padding into one token."""
    pipe = load_embedded_pipeline("sd3")
    with torch.no_grad():
        t5 = pipe._get_t5_prompt_embeds(["a red circle on a blue background", "a white square", ""], device="cpu")
    assert t5.shape[1] == 256
    padding = t5[:, 9:]  # the longest of these prompts is 7 words and </s>
    assert torch.allclose(padding, padding[:, :1].expand_as(padding), atol=1e-6)
    assert not torch.allclose(t5[0, :8], t5[1, :8])  # the prompt itself still matters


def test_training_on_the_collapsed_context_computes_what_the_pipeline_computes():
    """The training script's attention, one context token standing for many identical ones, is SD3's joint attention
    over the full context."""
    from diffusers import SD3Transformer2DModel

    collapsed_attention = _training_script().CollapsedPaddingAttention
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
        pos_embed_max_size=8,
    ).eval()  # fmt: skip
    x, pooled, timestep = torch.randn(2, 4, 8, 8), torch.randn(2, 8), torch.tensor([900.0, 100.0])
    prompt, pad = torch.randn(2, 5, 16), torch.randn(2, 1, 16)

    def run(context, processor=None):
        if processor is not None:
            transformer.set_attn_processor(processor)
        with torch.no_grad():
            return transformer(x, context, pooled, timestep).sample

    full = run(torch.cat([prompt, pad.expand(2, 40, 16)], 1))
    assert torch.allclose(run(torch.cat([prompt, pad], 1), collapsed_attention(40)), full, atol=1e-5)
    assert not torch.allclose(run(torch.cat([prompt, pad], 1), collapsed_attention(4)), full, atol=1e-3)
