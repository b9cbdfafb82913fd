"""An exact diffusion model: a Gaussian mixture with isotropic components, whose optimal denoiser is closed form.

With a component on every training image (a kernel density estimate) it is a model of real data whose sampling ODE
can be solved to any accuracy, for tests and benchmarks. `MixtureFlowPipeline` samples it as a flow-matching model
through a diffusers scheduler, with Flux's scheduler protocol, and `GaussianMixturePipeline` as a VP model, the way
DDPMPipeline does, so calibration can run on it like on any pipeline of either family. `ClassConditionalMixture`
names each component's class, and `GuidedMixturePipeline` / `GuidedMixtureFlowPipeline` sample it from prompts with
classifier-free guidance, as text-to-image pipelines do.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..solvers import sample


class GaussianMixture:
    """Mixture of N(mean_k, std_k^2 I); `denoiser(x, sigma)` is E[x0 | x0 + sigma * noise = x] on the sigma path.

    Args:
        means (`torch.Tensor`): (K, D) component means.
        stds (`torch.Tensor`): (K,) component standard deviations.
        log_weights (`torch.Tensor`): (K,) log mixture weights (normalised here).
    """

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, log_weights: torch.Tensor):
        self.means = means.to(torch.float64)
        self.stds = stds.to(torch.float64)
        self.log_weights = torch.log_softmax(log_weights.to(torch.float64), 0)
        self.dim = self.means.shape[1]

    @classmethod
    def random(cls, dim: int = 8, num_components: int = 3, seed: int = 0) -> "GaussianMixture":
        """A few well-separated random components (means ~ N(0, 1.5^2), stds in [0.15, 0.5])."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(num_components, dim, generator=g, dtype=torch.float64) * 1.5
        stds = 0.15 + 0.35 * torch.rand(num_components, generator=g, dtype=torch.float64)
        return cls(means, stds, torch.randn(num_components, generator=g, dtype=torch.float64))

    @classmethod
    def kde(cls, data: torch.Tensor, bandwidth: float) -> "GaussianMixture":
        """The Gaussian kernel density estimate of `data` (N, ...): one equal-weight component per sample."""
        means = data.reshape(len(data), -1).to(torch.float64)
        return cls(means, torch.full((len(means),), float(bandwidth)), torch.zeros(len(means)))

    def _log_joint(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """log(weight_k N(x; mean_k, (std_k^2 + sigma^2) I)) for each row of `x` (B, K), and the variances (K,)."""
        var = self.stds**2 + sigma**2
        sq = torch.cdist(x.to(torch.float64), self.means) ** 2
        return self.log_weights - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var), var

    def log_density(self, x: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
        """log p(x) (B,) of the mixture smoothed by noise of level `sigma` (the data density itself at 0)."""
        return torch.logsumexp(self._log_joint(x, sigma)[0], dim=1)

    def denoiser(self, x: torch.Tensor, sigma: float, components: torch.Tensor | None = None) -> torch.Tensor:
        """The optimal denoiser on the sigma path (`x = x0 + sigma * noise`), batched over rows of `x` (B, D).

        Args:
            x: (B, D) noisy samples.
            sigma: the noise level.
            components: (B, K) booleans, optional: row b is denoised under the mixture of its components only (their
                weights renormalised): a class-conditional model when the components carry classes.
        """
        x64 = x.to(torch.float64)
        logp, var = self._log_joint(x64, sigma)
        if components is not None:
            logp = logp.masked_fill(~components, -math.inf)
        resp = torch.softmax(logp, dim=1)  # (B, K)
        shrink = self.stds**2 / var  # (K,)
        # sum_k r_k (m_k + s_k (x - m_k)) = (r @ ((1 - s) m)) + (r @ s) x
        return ((resp * (1 - shrink)) @ self.means + (resp @ shrink)[:, None] * x64).to(x.dtype)

    def flow_denoiser(self, x: torch.Tensor, sigma: float, components: torch.Tensor | None = None) -> torch.Tensor:
        """The same denoiser on the flow path `x = (1 - sigma) x0 + sigma * noise`, sigma in [0, 1]."""
        if sigma >= 1:  # pure noise: the (conditional) data mean
            weights = self.log_weights.expand(x.shape[0], -1)
            if components is not None:
                weights = weights.masked_fill(~components, -math.inf)
            return (torch.softmax(weights, dim=1) @ self.means).to(x.dtype)
        return self.denoiser(x / (1 - sigma), sigma / (1 - sigma), components)

    def exact_solution(self, x: torch.Tensor, sigmas: list[float], steps_per_interval: int = 400) -> torch.Tensor:
        """A converged reference on the sigma path: iPNDM on a fine log-sigma grid between consecutive `sigmas`."""
        fine = []
        for a, b in zip(sigmas[:-1], sigmas[1:]):
            if b == 0:
                fine.append(torch.tensor([a]))
                continue
            fine.append(torch.exp(torch.linspace(math.log(a), math.log(b), steps_per_interval + 1))[:-1])
        grid = torch.cat(fine).tolist() + [sigmas[-1]]
        return sample(self.denoiser, x, grid, solver="ipndm")


class _MixturePipeline:
    """What both mixture pipelines share: the model, the scheduler, components, the progress-bar hook and noises."""

    def __init__(self, mixture: GaussianMixture, scheduler):
        self.mixture = mixture
        self.scheduler = scheduler
        self._progress_bar_config = {}

    @property
    def components(self) -> dict:
        """The model and the scheduler, as a diffusers pipeline lists its components (the calibration keys them)."""
        return {"mixture": self.mixture, "scheduler": self.scheduler}

    def set_progress_bar_config(self, **kwargs):
        self._progress_bar_config.update(kwargs)

    def start_noise(self, generators: list[torch.Generator]) -> torch.Tensor:
        return torch.cat([torch.randn(1, self.mixture.dim, generator=g, dtype=torch.float64) for g in generators])


class GaussianMixturePipeline(_MixturePipeline):
    """A Gaussian mixture sampled as a VP (DDPM-style) model through `scheduler`, the way DDPMPipeline drives one.

    The model is the mixture's exact epsilon predictor on the scheduler's noise schedule; each call draws one noise
    per generator and feeds the predictions to `scheduler.step` at every timestep. It has what calibration uses of a
    pipeline: `scheduler`, `set_progress_bar_config` and `__call__(batch_size, generator, num_inference_steps,
    output_type)`.

    Args:
        mixture (`GaussianMixture`): the data model.
        scheduler: a VP scheduler (DDPMScheduler, GITSScheduler, ...).
    """

    def __init__(self, mixture: GaussianMixture, scheduler):
        from ..noise import VPNoiseSchedule

        super().__init__(mixture, scheduler)
        self.noise = VPNoiseSchedule(scheduler.alphas_cumprod.double().numpy())

    def __call__(self, batch_size=1, generator=None, num_inference_steps=50, output_type="np"):
        generators = generator if isinstance(generator, list) else [generator] * batch_size
        return self._sample(self.start_noise(generators), self.mixture.denoiser, num_inference_steps)

    def _sample(self, x: torch.Tensor, denoiser: Callable, num_inference_steps: int) -> torch.Tensor:
        """Run the scheduler from the noise `x` with the exact epsilon prediction of `denoiser(x, sigma)`."""
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            sigma = float(self.noise.t_to_sigma(float(t)))
            x_sigma = x * (1 + sigma**2) ** 0.5
            eps = (x_sigma - denoiser(x_sigma, sigma)) / sigma
            x = self.scheduler.step(eps, t, x).prev_sample
        return x


@dataclass
class MixtureOutput:
    images: torch.Tensor


class MixtureFlowPipeline(_MixturePipeline):
    """A Gaussian mixture sampled as a flow-matching model through `scheduler`, the way FluxPipeline drives one.

    Each call draws one noise per generator, calls `set_timesteps(sigmas=linspace(1, 1/N, N), mu=mu)` (Flux always
    passes its default sigmas and, under dynamic shifting, `mu`), then feeds the exact velocity `(x - D(x)) / sigma`
    to `scheduler.step` at every timestep. It has what calibration uses of a pipeline.

    Args:
        mixture (`GaussianMixture`): the data model.
        scheduler: a flow-matching scheduler (FlowMatchEulerDiscreteScheduler, GITSFlowMatchScheduler).
        mu (`float`, *optional*): the dynamic-shift parameter to pass (Flux at 1024x1024: 1.15).
    """

    def __init__(self, mixture: GaussianMixture, scheduler, mu: float | None = None):
        super().__init__(mixture, scheduler)
        self.mu = mu

    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        output_type: str = "latent",
    ) -> MixtureOutput:
        generators = generator if isinstance(generator, list) else [generator or torch.Generator()] * batch_size
        return self._sample(self.start_noise(generators), self.mixture.flow_denoiser, num_inference_steps, sigmas)

    def _sample(
        self, x: torch.Tensor, denoiser: Callable, num_inference_steps: int, sigmas: list[float] | None
    ) -> MixtureOutput:
        """Run the scheduler from the noise `x` with the exact velocity of `denoiser(x, sigma)` (flow path)."""
        if sigmas is None:
            sigmas = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)
        self.scheduler.set_timesteps(sigmas=sigmas, mu=self.mu)
        self.scheduler.set_begin_index(0)
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        for t in self.scheduler.timesteps:
            sigma = float(t) / num_train_timesteps
            velocity = (x - denoiser(x, sigma)) / sigma
            x = self.scheduler.step(velocity.float(), t, x.float(), return_dict=False)[0].to(torch.float64)
        return MixtureOutput(images=x)


class ClassConditionalMixture:
    """A Gaussian mixture whose components carry class names, sampled with classifier-free guidance as text-to-image
    pipelines sample: `D = D(x) + w (D(x | class) - D(x))`, where D(x) is the whole mixture's denoiser and
    D(x | class) that of the class's components alone. A prompt is a class name; the empty prompt is unconditional.
    The guided ODE has no closed-form solution, but its denoiser is exact, so a fine solve is an exact reference.

    Args:
        mixture (`GaussianMixture`): the unconditional model.
        classes (`Sequence[str]`): the class name of each component (length K).
    """

    def __init__(self, mixture: GaussianMixture, classes: Sequence[str]):
        if len(classes) != len(mixture.means):
            raise ValueError(f"expected one class name per component ({len(mixture.means)}), got {len(classes)}")
        self.mixture = mixture
        self.dim = mixture.dim
        self.class_names = tuple(sorted(set(classes)))
        #: (K,) the index in `class_names` of each component's class.
        self.labels = torch.tensor([self.class_names.index(name) for name in classes])

    @classmethod
    def digits(cls, size: int = 8, bandwidth: float = 0.25) -> "ClassConditionalMixture":
        """The kernel density estimate of the 1500 training digits, each component named by its digit ("0".."9")."""
        from .data import digits_images, digits_labels

        mixture = GaussianMixture.kde(digits_images("train", size=size), bandwidth)
        return cls(mixture, [str(int(label)) for label in digits_labels("train")])

    def components(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, K) booleans: the components of each prompt's class (every component for the empty prompt)."""
        unknown = sorted({p for p in prompts if p and p not in self.class_names})
        if unknown:
            raise ValueError(f"prompts {unknown} name no class; use one of {list(self.class_names)} or ''")
        everything = torch.ones_like(self.labels, dtype=torch.bool)
        return torch.stack([self.labels == self.class_names.index(p) if p else everything for p in prompts])

    def guided(self, prompts: Sequence[str], guidance_scale: float, flow: bool = False) -> Callable:
        """`denoiser(x, sigma)` of the guided model for a batch with one prompt per row, on the sigma or flow path."""
        components = self.components(prompts)
        denoise = self.mixture.flow_denoiser if flow else self.mixture.denoiser

        def denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
            unconditional = denoise(x, sigma)
            return unconditional + guidance_scale * (denoise(x, sigma, components) - unconditional)

        return denoiser


def _prompt_list(prompt: str | Sequence[str] | None, batch_size: int) -> list[str]:
    prompts = [prompt or ""] * batch_size if prompt is None or isinstance(prompt, str) else list(prompt)
    if len(prompts) != batch_size:
        raise ValueError(f"got {len(prompts)} prompts for {batch_size} generators; pass one prompt or one per noise")
    return prompts


class _Prompted:
    """What both guided pipelines add to their mixture pipeline: the class-conditional model, keyed with the mixture
    among the components, and a call's start noises with its prompts' guided denoiser."""

    model: ClassConditionalMixture

    @property
    def components(self) -> dict:
        return {"mixture": self.model.mixture, "classes": self.model, "scheduler": self.scheduler}

    def _prompted(self, prompt, generator, guidance_scale: float, flow: bool) -> tuple[torch.Tensor, Callable]:
        generators = generator if isinstance(generator, list) else [generator or torch.Generator()]
        denoiser = self.model.guided(_prompt_list(prompt, len(generators)), guidance_scale, flow)
        return self.start_noise(generators), denoiser


class GuidedMixturePipeline(_Prompted, GaussianMixturePipeline):
    """A `ClassConditionalMixture` sampled as a VP text-to-image model with classifier-free guidance: like
    `GaussianMixturePipeline`, with `prompt` (class names, one per generator) and `guidance_scale`.

    Args:
        model (`ClassConditionalMixture`): the data model.
        scheduler: a VP scheduler (DDPMScheduler, GITSScheduler, ...).
    """

    def __init__(self, model: ClassConditionalMixture, scheduler):
        super().__init__(model.mixture, scheduler)
        self.model = model

    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        output_type: str = "np",
    ):
        return self._sample(*self._prompted(prompt, generator, guidance_scale, flow=False), num_inference_steps)


class GuidedMixtureFlowPipeline(_Prompted, MixtureFlowPipeline):
    """A `ClassConditionalMixture` sampled as a flow-matching text-to-image model with classifier-free guidance, as
    Flux-style pipelines sample: like `MixtureFlowPipeline`, with `prompt` and `guidance_scale`.

    Args:
        model (`ClassConditionalMixture`): the data model.
        scheduler: a flow-matching scheduler (FlowMatchEulerDiscreteScheduler, GITSFlowMatchScheduler).
        mu (`float`, *optional*): the dynamic-shift parameter to pass (Flux at 1024x1024: 1.15).
    """

    def __init__(self, model: ClassConditionalMixture, scheduler, mu: float | None = None):
        super().__init__(model.mixture, scheduler, mu)
        self.model = model

    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.5,
        sigmas: list[float] | None = None,
        output_type: str = "latent",
    ) -> MixtureOutput:
        return self._sample(*self._prompted(prompt, generator, guidance_scale, flow=True), num_inference_steps, sigmas)
