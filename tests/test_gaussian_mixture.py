"""The exact models the benchmarks and tests calibrate on: conditional and guided denoisers in closed form, and the
pipelines that sample them through diffusers schedulers."""

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from diffusers_gits.testing.gaussian_mixture import (
    ClassConditionalMixture,
    GaussianMixture,
    GaussianMixturePipeline,
    GuidedMixtureFlowPipeline,
    GuidedMixturePipeline,
    MixtureFlowPipeline,
)


# Deterministic DDIM (DDPM adds noise at every step); clip_sample=False: the exact mixture lives outside [-1, 1].
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False}
CLASSES = ["cat", "dog", "cat", "dog", "fox"]


@pytest.fixture(scope="module")
def model():
    return ClassConditionalMixture(GaussianMixture.random(num_components=5, seed=3), CLASSES)


def _class_mixture(model, name):
    """The mixture of one class's components alone, weights renormalised: what conditioning on it means."""
    keep = torch.tensor([c == name for c in CLASSES])
    mixture = model.mixture
    return GaussianMixture(mixture.means[keep], mixture.stds[keep], mixture.log_weights[keep])


@pytest.mark.parametrize("sigma", [0.05, 0.7, 4.0])
def test_a_class_conditional_denoiser_is_the_denoiser_of_the_class_components_alone(model, sigma):
    x = torch.randn(6, model.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    prompts = ["cat", "dog", "fox", "cat", "", "dog"]
    conditional = model.mixture.denoiser(x, sigma, model.components(prompts))
    flow_sigma = sigma / (1 + sigma)
    flow = model.mixture.flow_denoiser(x, flow_sigma, model.components(prompts))
    for row, prompt in enumerate(prompts):
        alone = _class_mixture(model, prompt) if prompt else model.mixture
        torch.testing.assert_close(conditional[row], alone.denoiser(x[row : row + 1], sigma)[0])
        torch.testing.assert_close(flow[row], alone.flow_denoiser(x[row : row + 1], flow_sigma)[0])
        # At pure noise the flow denoiser is the class's mean.
        pure = model.mixture.flow_denoiser(x[row : row + 1], 1.0, model.components([prompt]))
        torch.testing.assert_close(pure[0], alone.log_weights.exp() @ alone.means)


def test_guidance_moves_from_the_unconditional_denoiser_through_the_conditional_one(model):
    x = torch.randn(3, model.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    prompts = ["fox", "cat", "dog"]
    unconditional = model.mixture.denoiser(x, 0.5)
    conditional = model.mixture.denoiser(x, 0.5, model.components(prompts))
    torch.testing.assert_close(model.guided(prompts, 0.0)(x, 0.5), unconditional)
    torch.testing.assert_close(model.guided(prompts, 1.0)(x, 0.5), conditional)
    torch.testing.assert_close(model.guided(prompts, 4.0)(x, 0.5), unconditional + 4 * (conditional - unconditional))
    assert model.class_names == ("cat", "dog", "fox")
    with pytest.raises(ValueError, match=r"prompts \['owl'\] name no class; use one of \['cat', 'dog', 'fox'\]"):
        model.components(["cat", "owl"])
    with pytest.raises(ValueError, match="one class name per component"):
        ClassConditionalMixture(model.mixture, ["cat"])


def test_guided_pipelines_sample_the_guided_model_through_the_scheduler(model):
    generators = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731
    cat = ClassConditionalMixture(_class_mixture(model, "cat"), ["cat", "cat"])
    vp = GuidedMixturePipeline(model, DDIMScheduler(**SD_BETAS))
    unguided = GaussianMixturePipeline(model.mixture, DDIMScheduler(**SD_BETAS))
    torch.testing.assert_close(vp(generator=generators(), num_inference_steps=8), unguided(4, generators(), 8))
    torch.testing.assert_close(
        vp("cat", generators(), 8, guidance_scale=1.0),
        GaussianMixturePipeline(cat.mixture, DDIMScheduler(**SD_BETAS))(4, generators(), 8),
    )
    flow = GuidedMixtureFlowPipeline(model, FlowMatchEulerDiscreteScheduler(shift=3.0))
    plain = MixtureFlowPipeline(model.mixture, FlowMatchEulerDiscreteScheduler(shift=3.0))
    torch.testing.assert_close(
        flow([""] * 4, generators(), 8).images, plain(generator=generators(), num_inference_steps=8).images
    )
    torch.testing.assert_close(
        flow("cat", generators(), 8, guidance_scale=1.0).images,
        MixtureFlowPipeline(cat.mixture, FlowMatchEulerDiscreteScheduler(shift=3.0))(
            generator=generators(), num_inference_steps=8
        ).images,
    )
    # Guidance changes the samples; the prompts must match the generators one to one.
    assert not torch.allclose(flow("cat", generators(), 8).images, flow("cat", generators(), 8, 1.0).images)
    with pytest.raises(ValueError, match="got 2 prompts for 4 generators"):
        flow(["cat", "dog"], generators(), 8)


def test_the_digits_model_names_each_component_by_its_digit():
    model = ClassConditionalMixture.digits()
    assert model.class_names == tuple(str(d) for d in range(10)) and len(model.labels) == 1500 == len(
        model.mixture.means
    )
    assert model.dim == 64 and set(model.labels.tolist()) == set(range(10))
