"""The recorder: every patch calibration makes to a pipeline is undone, states are recorded and injected exactly,
and bad model output is named."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffusers_gits import CalibrationError, GITSScheduler
from diffusers_gits.calibration.families import model_family
from diffusers_gits.calibration.recorder import PipelineRunner, batch_key, check_pipeline_family
from diffusers_gits.solvers import sample
from diffusers_gits.testing.gaussian_mixture import GaussianMixture, GaussianMixturePipeline


# clip_sample=False: DDPMScheduler clips x0 to [-1, 1] by default, and the exact mixture lives outside it.
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False}


def test_a_run_records_the_exact_trajectory_and_restores_the_pipeline():
    mixture = GaussianMixture.random()
    pipe = GaussianMixturePipeline(mixture, DDPMScheduler(**SD_BETAS))
    family = model_family(check_pipeline_family(pipe), None, False)
    runner = PipelineRunner(pipe, None, seed=3, batch_size=4, pipe_kwargs={})
    sigmas = family.grid(7)
    scheduler = family.scheduler("dpmpp_2m", {7: sigmas})
    trajectory = runner.run(scheduler, [0, 1, 2], 7, keep_path=True)
    assert len(trajectory.states) == 8 and len(trajectory.denoised) == 7
    start = trajectory.states[0]
    expected = sample(mixture.denoiser, start.double(), sigmas, "dpmpp_2m").float()
    torch.testing.assert_close(trajectory.states[-1], expected, rtol=1e-4, atol=1e-5)
    assert isinstance(pipe.scheduler, DDPMScheduler) and pipe._progress_bar_config == {}
    assert "step" not in vars(scheduler)  # the wrapper is gone

    # Sample i gets the same noise in any batch, so teacher and student runs see the same noises.
    again = runner.run(scheduler, [2], 7, keep_path=False)
    torch.testing.assert_close(again.states[-1], trajectory.states[-1][2:])


def test_injected_states_replace_the_pipelines_own():
    mixture = GaussianMixture.random()
    pipe = GaussianMixturePipeline(mixture, DDPMScheduler(**SD_BETAS))
    family = model_family(check_pipeline_family(pipe), None, False)
    runner = PipelineRunner(pipe, None, seed=0, batch_size=2, pipe_kwargs={})
    sigmas = np.array([family.grid(5)[0], 3.0, 1.0, 0.0])
    scheduler = family.scheduler("euler", {3: sigmas})
    chosen = torch.randn(2, mixture.dim, dtype=torch.float64)
    trajectory = runner.run(scheduler, [0, 1], 3, keep_path=True, inject=[chosen, None, None])
    torch.testing.assert_close(trajectory.states[1], chosen.float())
    torch.testing.assert_close(trajectory.denoised[1], mixture.denoiser(chosen, 3.0).float())


def test_jobs_cut_indices_into_batches_named_by_their_noises():
    pipe = GaussianMixturePipeline(GaussianMixture.random(), DDPMScheduler(**SD_BETAS))
    runner = PipelineRunner(pipe, None, seed=0, batch_size=8, pipe_kwargs={})
    scheduler = GITSScheduler.from_config(pipe.scheduler.config, gits_sigmas={"2": [14.6, 1.0, 0.0]})
    jobs = runner.final_state_jobs("x", scheduler, list(range(20, 40)))
    assert [job.key for job in jobs] == ["x/noises 20-27 (8)", "x/noises 28-35 (8)", "x/noises 36-39 (4)"]
    assert [job.calls for job in jobs] == [16, 16, 8] and batch_key([5]) == "noises 5-5 (1)"
    assert jobs[2].run().shape == (4, 8)


def test_nan_model_output_names_the_grid_step():
    class Broken(GaussianMixture):
        def denoiser(self, x, sigma):
            out = super().denoiser(x, sigma)
            return out * float("nan") if sigma < 1.0 else out

    pipe = GaussianMixturePipeline(Broken.random(), DDPMScheduler(**SD_BETAS))
    with pytest.raises(CalibrationError, match="grid step") as info:
        GITSScheduler.from_calibration(pipe, [4], num_warmup=16, batch_size=16, progress=False)
    assert info.value.grid_step is not None and info.value.sigma < 1.0
    assert isinstance(pipe.scheduler, DDPMScheduler)  # the pipeline's own scheduler is restored


def test_calibration_schedulers_do_not_warn_about_flux_default_sigmas(caplog):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from diffusers_gits.testing.gaussian_mixture import MixtureFlowPipeline

    pipe = MixtureFlowPipeline(
        GaussianMixture.random(), FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), mu=1.15
    )
    family = model_family(check_pipeline_family(pipe), 1.15, True)
    runner = PipelineRunner(pipe, None, seed=0, batch_size=2, pipe_kwargs={})
    scheduler = family.scheduler("euler", {4: family.grid(4)})
    with caplog.at_level("WARNING", logger="diffusers_gits"):
        runner.run(scheduler, [0, 1], 4, keep_path=False)
    assert "replace_default_sigmas" not in caplog.text
    with caplog.at_level("WARNING", logger="diffusers_gits"):
        user = family.scheduler("euler", {4: family.grid(4)})
        user.set_timesteps(4, sigmas=np.linspace(1, 1 / 4, 4), mu=1.15)
    assert "replace_default_sigmas" in caplog.text  # the user's own scheduler still says so


def test_misspelt_option_is_refused_before_any_model_call():
    from conftest import tiny_ddpm_pipe

    from diffusers_gits import GITSScheduler

    pipe = tiny_ddpm_pipe()
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(
        TypeError, match=r"\['budgte'\] is neither an option of this call nor an argument of DDPMPipeline"
    ):
        GITSScheduler.from_calibration(pipe, [2], budgte=4, progress=False, cache=False)
    assert calls == []


def test_a_refused_scheduler_is_named_by_its_class():
    from conftest import tiny_ddpm_pipe
    from diffusers import UniPCMultistepScheduler

    from diffusers_gits.calibration.recorder import check_pipeline_family

    pipe = tiny_ddpm_pipe()
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", flow_shift=3.0)  # no flow sigmas
    with pytest.raises(ValueError, match="^UniPCMultistepScheduler has prediction_type='flow_prediction' without"):
        check_pipeline_family(pipe)


class _EmbedsPipeline(GaussianMixturePipeline):
    """Conditioned on an image embedding, like Kandinsky 2.2's decoder: its batch is the embeddings' times
    `num_images_per_prompt`."""

    def __init__(self, *args, honours_count: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.honours_count = honours_count

    def __call__(
        self, image_embeds, num_images_per_prompt=1, generator=None, num_inference_steps=50, output_type="np"
    ):
        count = image_embeds.shape[0] * num_images_per_prompt if self.honours_count else 1
        generator = generator[:count] if isinstance(generator, list) else generator
        return super().__call__(count, generator, num_inference_steps, output_type)


def test_a_pipeline_conditioned_on_embeddings_gets_its_batch_through_them():
    mixture = GaussianMixture.random()
    pipe = _EmbedsPipeline(mixture, DDPMScheduler(**SD_BETAS))
    family = model_family(check_pipeline_family(pipe), None, False)
    runner = PipelineRunner(pipe, None, seed=3, batch_size=4, pipe_kwargs={"image_embeds": torch.zeros(1, 8)})
    scheduler = family.scheduler("euler", {4: family.grid(4)})
    assert runner.run(scheduler, [0, 1, 2], 4, keep_path=False).states[-1].shape[0] == 3
    # A pipeline that makes fewer samples than asked is refused, not calibrated on fewer noises.
    pipe.honours_count = False
    with pytest.raises(CalibrationError, match="made 1 samples where calibration asked for 3"):
        runner.run(scheduler, [0, 1, 2], 4, keep_path=False)


def test_noise_streams_of_calibration_and_compare_are_disjoint_by_construction():
    from diffusers_gits.calibration.recorder import noise_seed
    from diffusers_gits.compare import FRESH_NOISES_START

    calibration = {noise_seed(seed, i) for seed in range(4) for i in range(512)}
    compare = {noise_seed(seed, FRESH_NOISES_START + j) for seed in range(4) for j in range(512)}
    assert len(calibration) == len(compare) == 4 * 512 and not calibration & compare
    # Formerly seed * 1_000_003 + index: compare's noise 3 at seed 0 was calibration's noise 0 at seed 1.
    assert noise_seed(0, FRESH_NOISES_START + 3) != noise_seed(1, 0)
    with pytest.raises(ValueError, match="seed"):
        noise_seed(-1, 0)


def test_prompts_for_a_pipeline_that_cannot_take_them_are_refused_before_any_call():
    pipe = GaussianMixturePipeline(GaussianMixture.random(), DDPMScheduler(**SD_BETAS))
    with pytest.raises(ValueError, match="takes no prompt"):
        PipelineRunner(pipe, ["a red fox"], seed=0, batch_size=2, pipe_kwargs={})
    embeds = _EmbedsPipeline(GaussianMixture.random(), DDPMScheduler(**SD_BETAS))
    with pytest.raises(ValueError, match="takes no prompt"):
        PipelineRunner(embeds, ["a red fox"], seed=0, batch_size=2, pipe_kwargs={"image_embeds": torch.zeros(1, 8)})
