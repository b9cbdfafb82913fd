"""Train the embedded text-to-image models on procedurally drawn coloured shapes (`diffusers_gits.shapes`).

Two pipelines of the classes people run, trained from scratch on 32x32 RGB images captioned like
"a red circle on a blue background", with 10% of the captions dropped so that classifier-free guidance works:

- `shapes-sd`: a `StableDiffusionPipeline` (AutoencoderKL, CLIP tokenizer + `CLIPTextModel`, `UNet2DConditionModel`
  with cross-attention), epsilon prediction on Stable Diffusion's scaled-linear betas, shipped with SD1.5's
  `PNDMScheduler` config;
- `shapes-sd3`: a `StableDiffusion3Pipeline` (the same autoencoder, two `CLIPTextModelWithProjection` over a
  16-token context and a frozen one-layer `T5EncoderModel`, `SD3Transformer2DModel` of width 96 and 6 blocks),
  rectified-flow velocity prediction, shipped with SD3's `FlowMatchEulerDiscreteScheduler(shift=3.0)`; trained on
  SD3's T5 padding collapsed to one token (`CollapsedPaddingAttention`), which computes what the pipeline computes.

Stages (each deterministic from its seed on a given machine and thread count):

    python examples/train_shapes_models.py vae     # the shared autoencoder and the encoded training set (10 min)
    python examples/train_shapes_models.py sd      # the SD-style pipeline (38 min on 1 thread)
    python examples/train_shapes_models.py sd3     # the flow pipeline (38 min on 2 threads)
    python examples/train_shapes_models.py report  # prompt adherence at 50 steps, sample grids

The tokenizer is a byte-pair vocabulary learnt from the captions' words (every caption word is one token), written as
CLIP's `vocab.json` / `merges.txt`.
"""

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from diffusers_gits import shapes


ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "diffusers_gits" / "embedded_models"
WORK = ROOT / "build" / "shapes_training"
NUM_TRAIN_IMAGES = 20_000
TEXT_HIDDEN = 64
CAPTION_DROPOUT = 0.1
CLIP_LENGTH_SD3 = 16  # the flow model's CLIP context: every caption fits, and SD3's joint attention stays short
SD3_HEADS = 3  # x 32 = the transformer's width
SD3_LAYERS = 6


def caption_words() -> list[str]:
    return sorted({"a", "on", "background", *shapes.SHAPES, *shapes.PALETTE})


def build_tokenizer(folder: Path, max_length: int = 77):
    """A CLIP tokenizer whose vocabulary holds every caption word as one token (and every printable ASCII character,
    so other text still tokenizes), learnt with byte-pair merges and written as CLIP's `vocab.json` / `merges.txt`.
    `max_length` is the length the pipelines pad CLIP's input to (SD's 77; the flow model's 16)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=[chr(c) for c in range(33, 127)],
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(caption_words() * 4, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    for c in range(33, 127):  # CLIP ends every word in "</w>": single characters need that form too
        vocab.setdefault(chr(c) + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length, pad_token="<|endoftext|>"
    )
    for word in caption_words():
        if len(tokenizer.tokenize(word)) != 1:
            raise RuntimeError(f"caption word {word!r} is not one token: {tokenizer.tokenize(word)}")
    return tokenizer


def build_t5_tokenizer():
    """A T5 (unigram) tokenizer whose pieces are the caption words, plus single characters for any other text."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -5.0)]
    pieces += [("\u2581" + word, -1.0) for word in caption_words()]
    pieces += [(chr(c), -10.0) for c in range(33, 127)]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=0)
    for word in caption_words():
        if len(tokenizer.tokenize(word)) != 1:
            raise RuntimeError(f"caption word {word!r} is not one token: {tokenizer.tokenize(word)}")
    return tokenizer


def text_encoder_config(tokenizer, projection: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=TEXT_HIDDEN if projection else 512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
        mid_block_add_attention=False,
    )


def lr_lambda(steps: int, warmup: int = 100):
    return lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))


def train_vae(args) -> None:
    torch.manual_seed(args.seed)
    images, specs = shapes.shapes_dataset(NUM_TRAIN_IMAGES, seed=args.seed)
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.steps))
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(args.steps):
        x = images[torch.randint(0, len(images), (args.batch_size,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(z).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = torch.nn.functional.mse_loss(reconstruction, x) + 1e-4 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(
                f"vae step {step:5d}  mse {loss.item() - 1e-4 * kl.item():.5f}  {time.time() - start:6.0f}s",
                flush=True,
            )
    vae.eval()
    with torch.no_grad():
        posteriors = [vae.encode(chunk).latent_dist for chunk in images.split(500)]
        mean = torch.cat([p.mean for p in posteriors])
        std = torch.cat([p.std for p in posteriors])
        reconstruction = torch.cat([vae.decode(m).sample for m in mean[:1000].split(500)])
    shift = float(mean.mean())
    scale = float(1 / (mean - shift).std())
    mse = float((reconstruction - images[:1000]).pow(2).mean())
    read_back = shapes.prompt_adherence(list(reconstruction), [s.prompt for s in specs[:1000]])
    print(f"vae: reconstruction mse {mse:.5f}, latent shift {shift:.4f} scale {scale:.4f}, read back {read_back}")
    WORK.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(WORK / "vae")
    torch.save(
        {"mean": mean, "std": std, "prompts": [s.prompt for s in specs], "shift": shift, "scale": scale},
        WORK / "latents.pt",
    )
    (WORK / "vae_report.json").write_text(json.dumps({"mse": mse, "read_back": read_back, "shift": shift}))


def load_vae(shift_factor: float | None):
    from diffusers import AutoencoderKL

    data = torch.load(WORK / "latents.pt")
    vae = AutoencoderKL.from_pretrained(WORK / "vae")
    vae.register_to_config(scaling_factor=data["scale"], shift_factor=shift_factor)
    return vae, data


def caption_batch(prompts: list[str], idx: torch.Tensor, generator: torch.Generator) -> list[str]:
    drop = torch.rand(len(idx), generator=generator) < CAPTION_DROPOUT
    return ["" if d else prompts[i] for i, d in zip(idx.tolist(), drop.tolist())]


def train_loop(args, name: str, modules: list[torch.nn.Module], loss_fn, build_pipe) -> None:
    """The shared loop: AdamW with warm-up and cosine decay, gradient clipping, an EMA copy that is saved."""
    parameters = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.steps))
    ema = [copy.deepcopy(m).requires_grad_(False) for m in modules]
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(args.steps):
        loss = loss_fn(generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for m_ema, m in zip(ema, modules):
                for p_ema, p in zip(m_ema.parameters(), m.parameters()):
                    p_ema.lerp_(p, 1 - decay)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"{name} step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.0f}s", flush=True)
    pipe = build_pipe(*ema)
    pipe.save_pretrained(OUTPUT / name)
    print(f"saved {OUTPUT / name}")


def train_sd(args) -> None:
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(args.seed)
    vae, data = load_vae(shift_factor=None)
    tokenizer = build_tokenizer(WORK / "tokenizer")
    text_encoder = CLIPTextModel(text_encoder_config(tokenizer, projection=False))
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    # Stable Diffusion 1.5's scheduler config, as its pipelines ship it.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    alphas_cumprod = scheduler.alphas_cumprod

    def build_pipe(unet, text_encoder):
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    pipe = build_pipe(unet, text_encoder)

    def loss_fn(generator):
        idx = torch.randint(0, len(data["mean"]), (args.batch_size,), generator=generator)
        mean, std = data["mean"][idx], data["std"][idx]
        x0 = (mean + std * torch.randn(mean.shape, generator=generator)) * data["scale"]
        embeds, _ = pipe.encode_prompt(caption_batch(data["prompts"], idx, generator), "cpu", 1, False)
        t = torch.randint(0, 1000, (args.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        return torch.nn.functional.mse_loss(unet(a * x0 + s * noise, t, encoder_hidden_states=embeds).sample, noise)

    train_loop(args, "shapes-sd", [unet, text_encoder], loss_fn, build_pipe)


class CollapsedPaddingAttention:
    """SD3's joint attention, for training, with the context's last token standing for `copies` identical tokens.

    The flow model's T5 has no position bias, so SD3's 256-token T5 padding gives identical context tokens: identical
    inputs stay identical through every block, and in attention `copies` equal keys and values act as one key whose
    logit is raised by log(copies). Training on the collapsed context computes the same function as the stock
    pipeline's full one (checked by `check_collapsed_context`) at a fifth of the cost.
    """

    def __init__(self, copies: int):
        self.log_copies = math.log(copies)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        batch, image_tokens = hidden_states.shape[:2]

        def split_heads(x):
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        def joint(image_proj, context_proj):
            return torch.cat(
                [split_heads(image_proj(hidden_states)), split_heads(context_proj(encoder_hidden_states))], 2
            )

        query, key, value = (
            joint(attn.to_q, attn.add_q_proj),
            joint(attn.to_k, attn.add_k_proj),
            joint(attn.to_v, attn.add_v_proj),
        )
        bias = torch.zeros(1, key.shape[2], dtype=query.dtype)
        bias[0, -1] = self.log_copies
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, query.shape[1] * query.shape[3])
        image, context = out[:, :image_tokens], out[:, image_tokens:]
        image = attn.to_out[1](attn.to_out[0](image))
        return image, (context if attn.context_pre_only else attn.to_add_out(context))


def train_sd3(args) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from diffusers.models.attention_processor import JointAttnProcessor2_0
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(args.seed)
    vae, data = load_vae(shift_factor=data_shift())
    tokenizer = build_tokenizer(WORK / "tokenizer_16", max_length=CLIP_LENGTH_SD3)
    text_encoder = CLIPTextModelWithProjection(text_encoder_config(tokenizer, projection=True))
    text_encoder_2 = CLIPTextModelWithProjection(text_encoder_config(tokenizer, projection=True))
    tokenizer_3 = build_t5_tokenizer()
    # SD3 pads the CLIP embeddings (2 x TEXT_HIDDEN features) to T5's width and joins the two along the sequence.
    text_encoder_3 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_3),
            d_model=2 * TEXT_HIDDEN,
            d_kv=TEXT_HIDDEN,
            d_ff=4 * TEXT_HIDDEN,
            num_layers=1,
            num_heads=2,
            pad_token_id=tokenizer_3.pad_token_id,
            eos_token_id=tokenizer_3.eos_token_id,
        )
    )
    # A T5 without position bias reads the prompt as a bag of words (the CLIP encoders keep the word order) and maps
    # every padding token to the same output, which is what lets training collapse SD3's padding. It stays frozen.
    text_encoder_3.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.data.zero_()
    text_encoder_3.requires_grad_(False).eval()
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=SD3_LAYERS,
        attention_head_dim=32,
        num_attention_heads=SD3_HEADS,
        joint_attention_dim=2 * TEXT_HIDDEN,
        caption_projection_dim=32 * SD3_HEADS,
        pooled_projection_dim=2 * TEXT_HIDDEN,
        pos_embed_max_size=16,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)  # SD3's shipped config
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )

    # The frozen T5's output for every caption, cut after the longest caption's tokens plus one padding token that
    # stands for the rest of SD3's `max_sequence_length` (256).
    captions = sorted(set(data["prompts"]) | {""})
    caption_index = {c: i for i, c in enumerate(captions)}
    with torch.no_grad():
        t5 = pipe._get_t5_prompt_embeds(captions, device="cpu")
    kept = 1 + max(len(tokenizer_3(c).input_ids) for c in captions)
    padding = t5[:, kept - 1 :]
    if (padding - padding[:, :1]).abs().max() > 1e-5:
        raise RuntimeError("T5's padding outputs differ: the collapsed context would not match the pipeline")
    t5_table, copies = t5[:, :kept], t5.shape[1] - kept + 1

    def context(prompts: list[str]):
        clip = [pipe._get_clip_prompt_embeds(prompts, device="cpu", clip_model_index=i) for i in (0, 1)]
        embeds = torch.cat([torch.cat([clip[0][0], clip[1][0]], -1), t5_table[[caption_index[p] for p in prompts]]], 1)
        return embeds, torch.cat([clip[0][1], clip[1][1]], -1)

    def check_collapsed_context():
        """The transformer on the collapsed context computes what it computes on the pipeline's full one."""
        prompts = ["a red circle on a blue background", "a white square", ""]
        x, sigma = torch.randn(3, 4, 16, 16), torch.tensor([900.0, 500.0, 100.0])
        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompts, None, None, device="cpu", do_classifier_free_guidance=False
            )
            full = transformer(x, embeds, pooled, sigma).sample
            transformer.set_attn_processor(CollapsedPaddingAttention(copies))
            collapsed = transformer(x, *context(prompts), sigma).sample
            transformer.set_attn_processor(JointAttnProcessor2_0())
        if (full - collapsed).abs().max() > 1e-4:
            raise RuntimeError(
                f"collapsed context differs from the pipeline's by {(full - collapsed).abs().max():.2e}"
            )

    check_collapsed_context()
    transformer.set_attn_processor(CollapsedPaddingAttention(copies))  # what the training runs on

    def build_pipe(transformer, text_encoder, text_encoder_2):
        transformer.set_attn_processor(JointAttnProcessor2_0())
        pipe.register_modules(transformer=transformer, text_encoder=text_encoder, text_encoder_2=text_encoder_2)
        return pipe

    def loss_fn(generator):
        idx = torch.randint(0, len(data["mean"]), (args.batch_size,), generator=generator)
        mean, std = data["mean"][idx], data["std"][idx]
        x0 = (mean + std * torch.randn(mean.shape, generator=generator) - data["shift"]) * data["scale"]
        embeds, pooled = context(caption_batch(data["prompts"], idx, generator))
        # Logit-normal noise levels (Esser et al. 2024, SD3's training default), half of the batch shifted by 3.0 as
        # the scheduler shifts its sampling sigmas (SD3 trains its high-resolution stage so): the high noise levels,
        # where a shape is decided, get more of the training, the low ones still their share.
        sigma = torch.sigmoid(torch.randn(args.batch_size, generator=generator))
        shift = torch.where(torch.arange(args.batch_size) % 2 == 0, 1.0, scheduler.config.shift)
        sigma = shift * sigma / (1 + (shift - 1) * sigma)
        noise = torch.randn(x0.shape, generator=generator)
        s = sigma.view(-1, 1, 1, 1)
        prediction = transformer(
            hidden_states=(1 - s) * x0 + s * noise,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            timestep=sigma * 1000,
        ).sample
        return torch.nn.functional.mse_loss(prediction, noise - x0)

    train_loop(args, "shapes-sd3", [transformer, text_encoder, text_encoder_2], loss_fn, build_pipe)


def data_shift() -> float:
    return float(torch.load(WORK / "latents.pt")["shift"])


def report(args) -> None:
    """Prompt adherence at 50 steps (stock scheduler) with and without guidance, and a sample grid per model."""
    from diffusers_gits.embedded import GUIDANCE_SCALE, load_embedded_pipeline
    from diffusers_gits.plotting import save_image_grid

    prompts = shapes.prompts_grid(args.report_images, seed=12345)
    path = ROOT / "examples" / "shapes_models_adherence.json"
    results = json.loads(path.read_text())["results"] if path.exists() else {}
    for name in args.models:
        pipe = load_embedded_pipeline(name)
        results[name] = {}
        for guidance in (1.0, GUIDANCE_SCALE[name]):
            images = []
            for i in range(0, len(prompts), 50):
                batch = prompts[i : i + 50]
                out = pipe(
                    batch,
                    num_inference_steps=50,
                    guidance_scale=guidance,
                    generator=[torch.Generator().manual_seed(i + j) for j in range(len(batch))],
                    output_type="np",
                )
                images.extend(out.images)
            results[name][f"guidance_{guidance:g}"] = shapes.prompt_adherence(images, prompts)
            print(name, guidance, results[name][f"guidance_{guidance:g}"], flush=True)
            if guidance != 1.0:
                tensors = torch.from_numpy(np.stack(images[:32])).permute(0, 3, 1, 2) * 2 - 1
                save_image_grid(tensors, ROOT / "examples" / f"shapes_{name}_samples.png", columns=8)
    path.write_text(
        json.dumps({"num_images": len(prompts), "num_inference_steps": 50, "results": results}, indent=2) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["vae", "sd", "sd3", "report"])
    parser.add_argument("--steps", type=int, default=None, help="training steps (vae 800, sd 2500, sd3 6000)")
    parser.add_argument("--batch-size", type=int, default=None, help="vae 32, sd and sd3 32")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--report-images", type=int, default=200)
    parser.add_argument("--models", nargs="+", choices=["sd", "sd3"], default=["sd", "sd3"], help="models to report")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.steps = args.steps or {"vae": 800, "sd": 2500, "sd3": 6000, "report": 0}[args.stage]
    args.batch_size = args.batch_size or 32
    stages = {"vae": train_vae, "sd": train_sd, "sd3": train_sd3, "report": report}
    stages[args.stage](args)


if __name__ == "__main__":
    main()
