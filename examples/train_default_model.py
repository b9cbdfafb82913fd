"""Train the embedded default model: a small unconditional DDPM on scikit-learn's handwritten digits.

The digits (1797 images, 8x8, shipped inside scikit-learn) are upsampled to 16x16 and scaled to [-1, 1]. The
model uses Stable Diffusion's noise schedule (scaled_linear betas 0.00085..0.012, 1000 steps, epsilon prediction)
so that SD-style schedules (the published SD1.5 GITS table, Align-Your-Steps, Karras) are meaningful on it.
The last 297 digits are held out of training: the quality benchmark compares samples against them.

Deterministic from its seed; about 20 minutes on 2 CPU cores. Run from the repository root:

    python examples/train_default_model.py --output diffusers_gits/default_model
"""

import argparse
import copy
import math
import time
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

from diffusers_gits.testing.data import digits_images


def build_unet() -> UNet2DModel:
    return UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 48, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("diffusers_gits/default_model"))
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = digits_images(split="train")
    unet = build_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = build_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = 200
    lr_at = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / args.steps))  # noqa: E731
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    generator = torch.Generator().manual_seed(args.seed)

    start = time.time()
    for step in range(args.steps):
        idx = torch.randint(0, len(data), (args.batch_size,), generator=generator)
        x0 = data[idx]
        # Random horizontal shifts by up to one pixel: a cheap augmentation that keeps digits legible.
        x0 = torch.roll(x0, shifts=int(torch.randint(-1, 2, (1,), generator=generator)), dims=3)
        t = torch.randint(0, 1000, (args.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        loss = torch.nn.functional.mse_loss(unet(a * x0 + s * noise, t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - args.ema_decay)
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.0f}s", flush=True)

    pipe = DDPMPipeline(unet=ema, scheduler=scheduler)
    pipe.save_pretrained(args.output)
    print(f"saved {args.output}")

    grid_pipe = DDPMPipeline(unet=ema, scheduler=DPMSolverMultistepScheduler.from_config(scheduler.config))
    images = grid_pipe(batch_size=64, num_inference_steps=50, generator=torch.Generator().manual_seed(0)).images
    from diffusers_gits.plotting import save_image_grid

    save_image_grid(images, args.output.parent.parent / "examples" / "default_model_samples.png", columns=8)


if __name__ == "__main__":
    main()
