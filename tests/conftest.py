"""Shared fixtures: tiny diffusers pipelines built offline from configs with random weights."""

import json
import os
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from fake_hub import FakeHub


os.environ.setdefault("HF_HUB_OFFLINE", "1")

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def tiny_ddpm_pipe(prediction_type: str = "epsilon"):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type=prediction_type, **SD_BETAS))


def local_clip_tokenizer(folder: Path):
    """A CLIP tokenizer from a locally written byte-level vocabulary, no download (model_max_length 77)."""
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = {
        token: i
        for i, token in enumerate(["<|startoftext|>", "<|endoftext|>", "!"] + chars + [c + "</w>" for c in chars])
    }
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def tiny_clip_text_encoder(tokenizer, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=8,
        intermediate_size=16,
        num_attention_heads=2,
        num_hidden_layers=2,
        projection_dim=8,
        vocab_size=max(1000, len(tokenizer)),
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )


def tiny_sd_components(folder: Path, scheduler=None, in_channels: int = 4) -> dict:
    """SD 1.x-style components (`in_channels=9` for inpainting)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
    )
    tokenizer = local_clip_tokenizer(folder)
    return {
        "unet": unet,
        "vae": tiny_vae(),
        "text_encoder": tiny_clip_text_encoder(tokenizer),
        "tokenizer": tokenizer,
        "scheduler": scheduler or DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **SD_BETAS),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def tiny_sd_pipe(folder: Path, scheduler=None, pipeline_class=None, in_channels: int = 4):
    from diffusers import StableDiffusionPipeline

    pipe = (pipeline_class or StableDiffusionPipeline)(**tiny_sd_components(folder, scheduler, in_channels))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipe(folder: Path):
    """SDXL: two CLIP text encoders (the second with projection), text-time added conditioning, Euler scheduler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 8,
        cross_attention_dim=16,
        norm_num_groups=2,
    )
    tokenizer = local_clip_tokenizer(folder)
    scheduler = EulerDiscreteScheduler(steps_offset=1, timestep_spacing="leading", **SD_BETAS)
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_clip_text_encoder(tokenizer),
        text_encoder_2=tiny_clip_text_encoder(tokenizer, projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets an empty calibration cache of its own."""
    monkeypatch.setenv("DIFFUSERS_GITS_CACHE", str(tmp_path / "gits-cache"))
    return tmp_path / "gits-cache"


@pytest.fixture(scope="session")
def sd_pipe(tmp_path_factory):
    return tiny_sd_pipe(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def ddpm_pipe():
    return tiny_ddpm_pipe()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        # huggingface_hub reads HF_ENDPOINT at import: point the already-imported constants at the fake too.
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", fake.endpoint)
        monkeypatch.setattr(
            huggingface_hub.constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        )
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        yield fake


@pytest.fixture
def no_backoff(monkeypatch):
    """huggingface_hub retries failed requests with exponential sleeps; skip the sleeping."""
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http.time, "sleep", lambda seconds: None)


def tiny_flow_vae(latent_channels: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def tiny_flux_pipe():
    """Flux with dynamic shifting; no text encoders (pass `prompt_embeds` and `pooled_prompt_embeds`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    vae = tiny_flow_vae(latent_channels=1)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def embedded_prompt_inputs(pooled_dim: int, size: int) -> dict:
    """Call arguments for a T5-based pipeline without text encoders: one embedded prompt, no guidance."""
    g = torch.Generator().manual_seed(5)
    return {
        "prompt_embeds": torch.randn(1, 8, 32, generator=g),
        "pooled_prompt_embeds": torch.randn(1, pooled_dim, generator=g),
        "height": size,
        "width": size,
        "guidance_scale": 1.0,
    }


def flux_inputs():
    return embedded_prompt_inputs(pooled_dim=32, size=16)


def tiny_sd3_pipe():
    """SD3 with a static shift of 3; no text encoders (pass the embeddings)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    vae = tiny_flow_vae(latent_channels=4)
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd3_inputs():
    return embedded_prompt_inputs(pooled_dim=64, size=8)


def tiny_pixart_sigma_pipe():
    """PixArt-Sigma (learned sigma: 8 output channels for 4 latent ones) on a DDIM scheduler; no text encoder."""
    from diffusers import AutoencoderKL, DDIMScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    vae = AutoencoderKL(
        block_out_channels=[4],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    pipe = PixArtSigmaPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=DDIMScheduler(**SD_BETAS)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixart_inputs():
    g = torch.Generator().manual_seed(5)
    return {
        "prompt_embeds": torch.randn(1, 8, 32, generator=g),
        "prompt_attention_mask": torch.ones(1, 8, dtype=torch.long),
        "negative_prompt": None,
        "height": 8,
        "width": 8,
        "guidance_scale": 1.0,
        "use_resolution_binning": False,
    }


PROMPT_AND_NEGATIVE = ("prompt_embeds", "negative_prompt_embeds")


def one_embedding(shape: tuple[int, ...], names: tuple[str, ...], **call) -> dict:
    """Call arguments for a pipeline without text encoders: one seeded embedding (batch 1) under each of `names`
    (the same tensor: no guidance is wanted), and `call`."""
    embeds = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    return {**dict.fromkeys(names, embeds), **call}


def tiny_wan_pipe():
    """Wan 2.1 as shipped: UniPC with flow sigmas, flow prediction and a static flow_shift; no text encoder (pass
    `prompt_embeds`)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )  # fmt: skip
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
    )
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_inputs():
    return one_embedding((1, 8, 32), ("prompt_embeds",), height=16, width=16, num_frames=1, guidance_scale=1.0)


def tiny_flux2_pipe():
    """Flux.2: dynamic shifting with `mu` computed from the image size and the step count; no text encoder."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel

    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        block_out_channels=(4,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1, latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=False,
    )  # fmt: skip
    transformer = Flux2Transformer2DModel(
        in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    pipe = Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux2_inputs():
    return one_embedding((1, 8, 32), ("prompt_embeds",), height=16, width=16, guidance_scale=1.0)


def tiny_cogview4_pipe():
    """CogView4: passes timesteps linspace(T, 1, N) with sigmas = timesteps / T and a linear dynamic shift; no text
    encoder."""
    from diffusers import AutoencoderKL, CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    transformer = CogView4Transformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=4, num_attention_heads=4,
        text_embed_dim=32, time_embed_dim=8, condition_dim=4, pos_embed_max_size=16, sample_size=16,
        rope_axes_dim=(2, 2),
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(4,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        latent_channels=4, norm_num_groups=1, sample_size=16,
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear"
    )
    pipe = CogView4Pipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cogview4_inputs():
    return one_embedding((1, 16, 32), PROMPT_AND_NEGATIVE, height=16, width=16, guidance_scale=1.0)


def tiny_sana_pipe():
    """Sana as shipped: DPM-Solver with flow sigmas, flow prediction and a static flow_shift; no text encoder."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
        sample_size=32,
    )  # fmt: skip
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1], downsample_block_type="conv",
        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407,
    )  # fmt: skip
    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sana_inputs():
    mask = torch.ones(1, 8, dtype=torch.long)
    return one_embedding(
        (1, 8, 8), PROMPT_AND_NEGATIVE, prompt_attention_mask=mask, negative_prompt=None,
        negative_prompt_attention_mask=mask, height=32, width=32, use_resolution_binning=False, guidance_scale=1.0,
    )  # fmt: skip


def tiny_cogvideox_2b_pipe():
    """CogVideoX-2b as shipped: its DDIM with `snr_shift_scale=3.0`, v-prediction, zero-SNR; no text encoder."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=1, sample_width=2, sample_height=2, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=16,
    )  # fmt: skip
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )  # fmt: skip
    scheduler = CogVideoXDDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
        rescale_betas_zero_snr=True, set_alpha_to_one=True, snr_shift_scale=3.0, timestep_spacing="trailing",
        clip_sample=False,
    )  # fmt: skip
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cogvideox_inputs():
    return one_embedding(
        (1, 16, 32), PROMPT_AND_NEGATIVE, height=16, width=16, num_frames=9, guidance_scale=1.0, max_sequence_length=16
    )


def tiny_kandinsky22_pipe():
    """Kandinsky 2.2's decoder as shipped: DDPM with a learned variance (8 output channels for 4), conditioned on image
    embeddings."""
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(8, 16), layers_per_block=1,
        encoder_hid_dim=8, encoder_hid_dim_type="image_proj", cross_attention_dim=16, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type=None, norm_num_groups=4,
    )  # fmt: skip
    movq = VQModel(
        block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"], in_channels=3,
        latent_channels=4, layers_per_block=1, norm_num_groups=32, norm_type="spatial", num_vq_embeddings=12,
        out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], vq_embed_dim=4,
    )  # fmt: skip
    scheduler = DDPMScheduler(
        beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=True, clip_sample_range=1.0,
        prediction_type="epsilon", thresholding=False, variance_type="learned_range",
    )  # fmt: skip
    pipe = KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def kandinsky22_inputs():
    names = ("image_embeds", "negative_image_embeds")
    return one_embedding((1, 8), names, height=16, width=16, guidance_scale=1.0)


def tiny_deepfloyd_if_pipe():
    """DeepFloyd IF stage I as shipped: pixel-space DDPM with a learned variance (6 output channels for 3) and dynamic
    thresholding; no text encoder."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        in_channels=3, out_channels=6, cross_attention_dim=32, encoder_hid_dim=16, attention_head_dim=4,
        addition_embed_type="text", addition_embed_type_num_heads=2, cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift", act_fn="gelu", norm_num_groups=32,
    )  # fmt: skip
    scheduler = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.0,
        prediction_type="epsilon", variance_type="learned_range",
    )  # fmt: skip
    pipe = IFPipeline(
        tokenizer=None, text_encoder=None, unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        watermarker=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def deepfloyd_if_inputs():
    return one_embedding((1, 8, 16), PROMPT_AND_NEGATIVE, height=16, width=16, guidance_scale=1.0)


def tiny_hidream_pipe():
    """HiDream-I1-Full as shipped: UniPC with flow sigmas, flow prediction and a static flow_shift; four text encoders'
    embeddings passed in (T5 batch-first, Llama's layers batch-second), no text encoder."""
    from diffusers import AutoencoderKL, HiDreamImagePipeline, HiDreamImageTransformer2DModel, UniPCMultistepScheduler

    torch.manual_seed(0)
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_channels=[32, 16], text_emb_dim=64, num_routed_experts=4,
        num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1),
    )  # fmt: skip
    transformer.eval()  # in training mode it returns patch tokens, not latents
    vae = AutoencoderKL(
        block_out_channels=(4,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        latent_channels=4, norm_num_groups=1, sample_size=16, scaling_factor=0.3611, shift_factor=0.1159,
    )  # fmt: skip
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    encoders = {f"{kind}{suffix}": None for kind in ("text_encoder", "tokenizer") for suffix in ("", "_2", "_3", "_4")}
    pipe = HiDreamImagePipeline(scheduler=scheduler, vae=vae, transformer=transformer, **encoders)
    # HiDream rescales every request to the area of its default size (128 latents a side); 16 keeps the test tiny.
    pipe.default_sample_size = 16
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hidream_inputs():
    g = torch.Generator().manual_seed(5)
    return {
        "pooled_prompt_embeds": torch.randn(1, 64, generator=g),
        "prompt_embeds_t5": torch.randn(1, 8, 32, generator=g),
        "prompt_embeds_llama3": torch.randn(2, 1, 8, 16, generator=g),
        "height": 16,
        "width": 16,
        "guidance_scale": 1.0,
    }
