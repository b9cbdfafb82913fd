"""The choice stage's scorer: per-noise RMSE to the teacher, each sample made once, every call charged."""

import numpy as np
import torch
from diffusers import DDPMScheduler

from diffusers_gits.choice import HeldOutScorer
from diffusers_gits.execution import CallBudget, Executor, process_state
from diffusers_gits.families import model_family
from diffusers_gits.gaussian_mixture import GaussianMixture, GaussianMixturePipeline
from diffusers_gits.recorder import PipelineRunner, check_pipeline_family
from diffusers_gits.solvers import sample


# clip_sample=False: DDPMScheduler clips x0 to [-1, 1] by default, and the exact mixture lives outside it.
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False}


def scorer_for(pool, budget, calls):
    mixture = GaussianMixture.random()
    pipe = GaussianMixturePipeline(mixture, DDPMScheduler(**SD_BETAS))
    original = PipelineRunner.run

    class Counting(PipelineRunner):
        def run(self, scheduler, indices, num_steps, *args, **kwargs):
            calls.append(len(indices) * num_steps)
            return original(self, scheduler, indices, num_steps, *args, **kwargs)

    runner = Counting(pipe, None, seed=0, batch_size=4, pipe_kwargs={})
    family = model_family(check_pipeline_family(pipe), None, False)
    fine, _ = family.fine_grid(9)
    reference = family.scheduler("ipndm", {len(fine) - 1: fine})
    executor = Executor(process_state("cpu"))
    return HeldOutScorer(executor, runner, family, "dpmpp_2m", reference, pool, budget), family, mixture, fine


def test_losses_are_per_noise_rmse_to_the_teacher_and_each_sample_is_made_once():
    calls, budget = [], CallBudget(10**6)
    scorer, family, mixture, fine = scorer_for(list(range(10, 20)), budget, calls)
    coarse = family.grid(4)
    (first,) = scorer.score([coarse], "race", add_noises=6)
    assert scorer.used == list(range(10, 16)) and first.shape == (6,)
    assert budget.spent == {"teacher": 6 * scorer.fine_steps, "selection": 6 * 4} and sum(calls) == budget.total

    # The same RMSE as sampling the mixture directly from the pipeline's noises.
    noises = torch.cat([torch.randn(1, mixture.dim, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
                        for i in range(10, 16)])  # fmt: skip
    start = noises * (1 + float(fine[0]) ** 2) ** 0.5
    teacher = sample(mixture.denoiser, start, fine, "ipndm")
    student = sample(mixture.denoiser, start, coarse, "dpmpp_2m")
    expected = (student - teacher).pow(2).mean(1).sqrt()
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-6)

    calls.clear()
    again, more = scorer.score([coarse, coarse], "race", add_noises=2)
    assert torch.equal(again[:6], first) and torch.equal(again, more) and again.shape == (8,)
    assert sum(calls) == 2 * scorer.fine_steps + 2 * 4  # two new references, two new samples: nothing redone
    (head,) = scorer.score([family.grid(3)], "race", upto=3)
    assert head.shape == (3,) and budget.spent["selection"] == 6 * 4 + 2 * 4 + 3 * 3


def test_the_teacher_scored_against_itself_has_no_error():
    scorer, family, _, fine = scorer_for(list(range(8)), CallBudget(10**6), [])
    scorer.solver = "ipndm"
    (losses,) = scorer.score([np.asarray(fine)], "race", add_noises=8)
    assert losses.abs().max() == 0
