"""Calibrate GITS for Stable Diffusion 1.5 and compare it with the pipeline's default schedule (needs a GPU and the
model weights; run with network access or a warm Hugging Face cache).

    python examples/calibrate_sd15.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 --output sd15-gits
"""

import argparse

import torch
from diffusers import StableDiffusionPipeline

from diffusers_gits import GITSScheduler


PROMPTS = [
    "a photo of a cat sitting on a windowsill",
    "a red fox in snow, golden hour",
    "a bowl of ramen, studio lighting",
    "an old lighthouse on a cliff at dusk",
    "a watercolor painting of a city street in the rain",
    "a close-up portrait of an elderly fisherman",
    "a futuristic car parked in a desert",
    "a bookshelf full of colorful books",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="stable-diffusion-v1-5/stable-diffusion-v1-5")
    parser.add_argument("--output", default="sd15-gits")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 6, 8, 10])
    parser.add_argument("--num-warmup", type=int, default=256)
    args = parser.parse_args()

    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float16).to("cuda")
    scheduler = GITSScheduler.from_calibration(
        pipe,
        args.steps,
        prompts=PROMPTS,
        num_warmup=args.num_warmup,
        batch_size=16,
        guidance_scale=7.5,
        height=512,
        width=512,
    )
    scheduler.save_pretrained(args.output)
    for k, entry in scheduler.calibration_report.items():
        print(f"{k} steps: held-out error {entry['gits_error']:.4f} vs default schedule {entry['default_error']:.4f}")
    pipe.scheduler = scheduler
    pipe("a red fox in snow", num_inference_steps=args.steps[0]).images[0].save(f"{args.output}/fox.png")


if __name__ == "__main__":
    main()
