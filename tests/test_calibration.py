"""Calibration through pipelines: the exact Gaussian-mixture model, a tiny DDPMPipeline and a tiny Stable Diffusion."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from diffusers_gits import GITSFlowMatchScheduler, GITSScheduler
from diffusers_gits.noise import FLOW_PATH, shift_flow_sigmas
from diffusers_gits.schedules import (
    baseline_schedules,
    flow_baseline_schedules,
    karras_sigmas,
    timestep_spacing_sigmas,
    validate_sigmas,
)
from diffusers_gits.solvers import sample
from diffusers_gits.testing.gaussian_mixture import GaussianMixture, GaussianMixturePipeline, MixtureFlowPipeline


# clip_sample=False: DDPMScheduler clips x0 to [-1, 1] by default, and the exact mixture lives outside it.
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False}


@pytest.fixture(scope="module")
def mixture_problem():
    mixture = GaussianMixture.random()
    pipe = GaussianMixturePipeline(mixture, DDPMScheduler(**SD_BETAS))
    z = torch.randn(256, mixture.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(123))
    sigma_max = pipe.noise.sigma_max
    reference = mixture.exact_solution(z * (1 + sigma_max**2) ** 0.5, [sigma_max, 1e-3, 0.0], steps_per_interval=1000)

    def error(sigmas, solver):
        start = z * (1 + float(sigmas[0]) ** 2) ** 0.5  # the pipeline's VP noise, seen at the schedule's first sigma
        return (sample(mixture.denoiser, start, sigmas, solver) - reference).pow(2).mean().sqrt().item()  # pooled

    return pipe, error


@pytest.mark.parametrize(
    "solver,jump_cost,coeff,refine,budget",
    [
        ("euler", "euler", 1.0, False, 2.0),
        ("dpmpp_2m", "euler", "auto", True, 10.0),  # the refinement of earlier versions needs about 10x the teacher
        ("unipc", "solver", "auto", True, 10.0),
    ],
)
def test_calibrated_schedule_beats_uniform_and_karras_on_exact_model(
    mixture_problem, solver, jump_cost, coeff, refine, budget
):
    pipe, error = mixture_problem
    scheduler = GITSScheduler.from_calibration(
        pipe, [6, 8], num_warmup=128, batch_size=64, solver=solver, jump_cost=jump_cost, coeff=coeff, refine=refine,
        budget=budget, progress=False,
    )  # fmt: skip
    noise = scheduler.noise_schedule
    for k in (6, 8):
        gits = error(scheduler.sigmas_for(k), solver)
        uniform = error(timestep_spacing_sigmas(noise, k, "linspace"), solver)
        karras = error(karras_sigmas(noise.sigma_min, noise.sigma_max, k), solver)
        assert gits < min(uniform, karras), (k, gits, uniform, karras)


@pytest.fixture(scope="module")
def two_mode_problem():
    """Two well-separated modes: the student search wins where it can, and must fall back where it cannot."""
    mixture = GaussianMixture.random(num_components=2, seed=1)
    pipe = GaussianMixturePipeline(mixture, DDPMScheduler(**SD_BETAS))
    z = torch.randn(256, mixture.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(123))
    sigma_max = pipe.noise.sigma_max
    reference = mixture.exact_solution(z * (1 + sigma_max**2) ** 0.5, [sigma_max, 1e-3, 0.0], steps_per_interval=1000)

    def error(sigmas, solver):
        start = z * (1 + float(sigmas[0]) ** 2) ** 0.5
        return (sample(mixture.denoiser, start, sigmas, solver) - reference).pow(2).mean(1)

    return pipe, error


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc"])
@pytest.mark.parametrize("require_confidence", [True, False])
def test_calibration_is_close_to_or_better_than_the_best_baseline_on_exact_model(
    two_mode_problem, solver, require_confidence
):
    """The strict rule is never worse than the best baseline in pooled RMSE. The default (where the race confirms
    nothing, the lower pooled error on the held-out noises) stays close in the bulk of the noises (mean per-sample
    RMSE), but on this two-mode toy its pooled RMSE is decided by the few of 256 test noises that end in the other
    mode, which the held-out noises rarely show."""
    pipe, error = two_mode_problem
    scheduler = GITSScheduler.from_calibration(
        pipe, [6, 8], num_warmup=128, batch_size=64, solver=solver, require_confidence=require_confidence,
        progress=False,
    )  # fmt: skip
    report = scheduler.calibration_report
    metric = (lambda e: e.mean().sqrt().item()) if require_confidence else (lambda e: e.sqrt().mean().item())
    for k in (6, 8):
        baselines = baseline_schedules(scheduler.noise_schedule, k)
        best = min(metric(error(sigmas, solver)) for sigmas in baselines.values())
        ours = metric(error(scheduler.sigmas_for(k), solver))
        assert ours <= (1.02 if require_confidence else 1.2) * best, (k, ours, best, report[str(k)]["summary"])
        entry = report[str(k)]
        if entry["confident"]:
            assert entry["chosen"] == "gits" and ours < best
        elif entry["chosen"] == "gits":  # it led over the search and held-out noises, unconfirmed: the report says so
            assert (
                not require_confidence
                and entry["summary"].startswith("gits leads over")
                and "unconfirmed" in entry["summary"]
            )
        else:  # a baseline led: returned unchanged, and the report says nothing better was found
            assert entry["chosen"] in baselines and "as good as this budget finds" in entry["summary"]
            np.testing.assert_allclose(scheduler.sigmas_for(k), baselines[entry["chosen"]])


def test_the_budget_is_never_exceeded_and_every_call_is_counted(two_mode_problem, monkeypatch):
    pipe, _ = two_mode_problem
    calls = []
    original = GaussianMixturePipeline.__call__

    def spy(self, batch_size=1, generator=None, num_inference_steps=50, output_type="np"):
        calls.append(num_inference_steps * len(generator))
        return original(self, batch_size, generator, num_inference_steps, output_type)

    monkeypatch.setattr(GaussianMixturePipeline, "__call__", spy)
    for budget in (1.0, 2.0):
        calls.clear()
        scheduler = GITSScheduler.from_calibration(
            pipe, [4, 6], num_warmup=64, batch_size=16, budget=budget, cache=False, progress=False
        )
        meta = scheduler.calibration_record["model_calls"]
        assert sum(calls) == meta["total"] <= meta["budget"] == int(budget * 64 * 61)


def test_a_search_result_no_better_than_the_baselines_falls_back_to_them(two_mode_problem, monkeypatch):
    from diffusers_gits.calibration import stages as calibration
    from diffusers_gits.calibration.search import StudentPathResult

    pipe, _ = two_mode_problem

    def bunched(grid_sigmas, targets, num_steps, solver, evaluate, path, **options):
        size = len(grid_sigmas)  # every step crowded at the end: a poor schedule
        return StudentPathResult({k: [0, *range(size - k, size)] for k in num_steps}, {})

    monkeypatch.setattr(calibration, "student_path_dp", bunched)
    scheduler = GITSScheduler.from_calibration(
        pipe, [4, 6], num_warmup=128, batch_size=32, cache=False, progress=False
    )
    for k in ("4", "6"):
        entry = scheduler.calibration_report[k]
        assert entry["chosen"] != "gits" and not entry["confident"]
        assert "as good as this budget finds" in entry["summary"]
        assert entry["candidates"]["gits"]["loss_minus_chosen"] > entry["candidates"]["gits"]["ci_half_width"]


@pytest.fixture(scope="module")
def flow_mixture_problem():
    """The exact mixture as a Flux-like flow model (dynamic shifting at mu = 1.15, Flux's 1024 x 1024 value)."""
    mixture = GaussianMixture.random()
    pipe = MixtureFlowPipeline(mixture, FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), mu=1.15)
    z = torch.randn(256, mixture.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(123))
    fine = np.append(shift_flow_sigmas(np.linspace(1, 1e-4, 4000), np.exp(1.15)), 0.0)
    reference = sample(mixture.flow_denoiser, z, fine, "ipndm", path=FLOW_PATH)

    def error(sigmas, solver):
        return (sample(mixture.flow_denoiser, z, sigmas, solver, path=FLOW_PATH) - reference).pow(2).mean(1)

    return pipe, error


@pytest.mark.parametrize(
    "solver,jump_cost,options",
    [
        ("euler", "euler", {"coeff": 1.0, "num_holdout": 0}),  # the paper's search alone
        ("dpmpp_2m", "student", {}),  # the default search and race
        ("unipc", "solver", {"coeff": 1.0, "num_holdout": 0}),
    ],
)
def test_flow_calibration_beats_the_flux_and_stock_defaults_on_exact_model(
    flow_mixture_problem, solver, jump_cost, options
):
    pipe, error = flow_mixture_problem
    scheduler = GITSScheduler.from_calibration(
        pipe, [6, 8], num_warmup=128, batch_size=64, solver=solver, jump_cost=jump_cost, progress=False, **options
    )
    assert isinstance(scheduler, GITSFlowMatchScheduler) and scheduler.calibration_mu == pytest.approx(1.15)
    for k in (6, 8):
        # In the bulk of the noises (mean per-sample RMSE); the pooled RMSE of this toy is a handful of mode switches.
        gits = error(scheduler.schedule_for(k), solver).sqrt().mean().item()
        baselines = flow_baseline_schedules(k, np.exp(1.15), 1e-3)
        best = min(error(sigmas, solver).sqrt().mean().item() for sigmas in baselines.values())
        assert gits < best, (k, gits, best)


def test_report_and_metadata_are_recorded(mixture_problem):
    pipe, _ = mixture_problem
    scheduler = GITSScheduler.from_calibration(pipe, [3, 5], num_warmup=96, batch_size=32, progress=False)
    meta = scheduler.calibration_record
    assert (
        meta["solver"] == "dpmpp_2m"
        and meta["teacher"] == "ipndm"
        and meta["grid"] == {"type": "uniform_timestep", "size": 61}
        and meta["jump_cost"] == "student"
    )
    assert meta["num_warmup"] == 96 and meta["num_search"] + meta["num_holdout"] == 96 and meta["coeff"] is None
    calls = meta["model_calls"]
    # The search noises are solved by the teacher on the grid with every interval halved (121 steps).
    assert calls["teacher"] >= meta["num_search"] * 121 and calls["search"] > 0 and calls["selection"] > 0
    assert calls["total"] == calls["teacher"] + calls["search"] + calls["selection"] <= calls["budget"] == 2 * 96 * 61
    for k in ("3", "5"):
        entry = scheduler.calibration_report[k]
        assert entry["chosen"] in entry["candidates"] and isinstance(entry["confident"], bool)
        # The two baselines closest to the teacher on the search noises race the searched schedule; TORS, from the
        # teacher's trajectories at no model call, is screened with them.
        baselines = {"uniform", "karras", "logsnr", "ays_sd15", "gits_sd15_published", "tors"}
        assert set(entry["search_noise_pooled_rmse"]) == baselines | {"gits"}
        assert "gits" in entry["candidates"] and len(set(entry["candidates"]) & baselines) == 2
        chosen = entry["candidates"][entry["chosen"]]
        # Losses are per-noise squared errors: their mean is the square of the pooled RMSE the report gives.
        assert entry["gits_error"] == pytest.approx(chosen["pooled_rmse"]) == pytest.approx(chosen["mean_loss"] ** 0.5)
        assert chosen["noises"] == entry["held_out_noises"] and entry["gits_mean_rmse"] == chosen["mean_rmse"]
        assert chosen["pooled_rmse"] >= chosen["mean_rmse"]  # the root of the mean square is at least the mean
        # Screening scored the searched schedule and every baseline on the search noises.
        assert set(entry["search_noise_pooled_rmse"]) == baselines | {"gits"}
        assert ("beats every baseline" in entry["summary"]) == entry["confident"]
        assert len(validate_sigmas(scheduler.sigmas_for(int(k)))) == int(k) + 1
    json.dumps(meta)  # plain JSON values only
    regularity = meta["regularity"]  # the teacher's search trajectories, measured with no extra model call
    assert regularity["num_trajectories"] == meta["num_search"] and regularity["num_steps"] == 61
    assert 0 < regularity["max_deviation"] < 1 and 0 < regularity["regularity_score"] <= 1
    from diffusers_gits.model_card import model_card

    card = model_card(json.loads(scheduler.to_json_string()), record=meta)
    assert "Trajectory regularity" in card
    for k in ("3", "5"):  # per N, the best baseline and what the calibration bought over it
        closest = scheduler.calibration_report[k]["closest_baseline"]
        assert closest["name"] in baselines and closest["noises"] == scheduler.calibration_report[k]["held_out_noises"]
        assert f"{closest['name']} ({closest['ratio']:.3f})" in card
        if scheduler.calibration_report[k]["chosen"] == closest["name"]:
            assert closest["ratio"] == 1.0
    # The config keeps a summary: a stock scheduler built from it warns about a few short keys, not the report.
    summary = scheduler.config.calibration
    assert summary["chosen"] == {k: scheduler.calibration_report[k]["chosen"] for k in ("3", "5")}
    assert "report" not in summary and "model_calls" not in summary and len(json.dumps(summary)) < 400


def test_fixed_coeff_without_holdout_is_the_pure_dp(mixture_problem):
    pipe, _ = mixture_problem
    scheduler = GITSScheduler.from_calibration(
        pipe, 4, num_warmup=32, batch_size=32, jump_cost="euler", coeff=1.2, num_holdout=0, progress=False
    )
    grid = set(np.round(timestep_spacing_sigmas(scheduler.noise_schedule, 61, "linspace"), 6))
    assert set(np.round(scheduler.sigmas_for(4), 6)) <= grid  # every point is a fine-grid point (plus the final 0)
    meta = scheduler.calibration_record
    assert meta["num_holdout"] == 0 and meta["report"]["4"]["coeff"] == 1.2
    assert meta["regularity"]["num_trajectories"] == 32 and 0 <= meta["regularity"]["denoising_closer_fraction"] <= 1
    assert meta["model_calls"] == {
        "teacher": 32 * 61,
        "total": 32 * 61,
        "budget": 2 * 32 * 61,
        "teacher_equivalents": 1.0,
    }


def test_more_arrivals_per_node_cost_what_the_settings_price(mixture_problem):
    from diffusers_gits.calibration.settings import student_search_calls

    pipe, _ = mixture_problem
    calls = {}
    for arrivals in (1, 2):
        scheduler = GITSScheduler.from_calibration(
            pipe,
            [3, 4],
            num_warmup=32,
            num_search=8,
            num_holdout=0,
            solver="unipc",
            arrivals_per_node=arrivals,
            progress=False,
            cache=False,
        )
        meta = scheduler.calibration_record
        assert meta["arrivals_per_node"] == arrivals and meta["num_search"] == 8
        calls[arrivals] = meta["model_calls"]["search"]
        assert calls[arrivals] == student_search_calls([3, 4], 61, 8, arrivals)
    # Layers 1-3 are evaluated: a second pass over layers 2 and 3, each but its first node (one path into it), plus
    # the pass's throw-away call; layer 1 has one path into each node.
    assert calls[2] - calls[1] == 8 * ((61 - 2 - 1 + 1) + (61 - 3 - 1 + 1))


def test_calibration_is_deterministic(mixture_problem):
    pipe, _ = mixture_problem
    kwargs = {"num_warmup": 32, "batch_size": 16, "num_holdout": 8, "progress": False, "cache": False}
    a = GITSScheduler.from_calibration(pipe, [4], **kwargs)
    b = GITSScheduler.from_calibration(pipe, [4], **kwargs)
    assert a.sigmas_for(4) == b.sigmas_for(4)


def test_memory_does_not_grow_with_warmup(mixture_problem, monkeypatch):
    """Trajectories are consumed batch by batch: at most one batch is alive at a time."""
    from diffusers_gits.calibration import stages as calibration

    pipe, _ = mixture_problem
    seen = []
    original = calibration.JumpCostAccumulator.update

    def spy(self, states, denoised):
        seen.append(states.shape[1])
        return original(self, states, denoised)

    monkeypatch.setattr(calibration.JumpCostAccumulator, "update", spy)
    GITSScheduler.from_calibration(
        pipe, [4], num_warmup=80, batch_size=16, jump_cost="euler", coeff=1.0, num_holdout=0, progress=False
    )
    assert seen == [16] * 5


def test_ddpm_pipeline_end_to_end(ddpm_pipe, tmp_path):
    original = ddpm_pipe.scheduler
    scheduler = GITSScheduler.from_calibration(
        ddpm_pipe, [3, 5], num_warmup=16, batch_size=8, grid_size=21, progress=False
    )
    assert ddpm_pipe.scheduler is original
    ddpm_pipe.scheduler = scheduler
    first = ddpm_pipe(
        batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    scheduler.save_pretrained(tmp_path)
    ddpm_pipe.scheduler = GITSScheduler.from_pretrained(tmp_path)
    second = ddpm_pipe(
        batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert first.shape == (2, 8, 8, 1) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    "scheduler",
    [GITSScheduler(gits_sigmas={"2": [14.6, 1.0, 0.0]}), GITSFlowMatchScheduler(gits_sigmas={"2": [1.0, 0.5, 0.0]})],
    ids=["vp", "flow"],
)
def test_pipeline_saved_with_gits_scheduler_reloads(ddpm_pipe, tmp_path, scheduler):
    """diffusers reloads a pipeline's component from the module model_index.json names (each scheduler's own)."""
    from diffusers import DDPMPipeline

    ddpm_pipe.scheduler = scheduler
    ddpm_pipe.save_pretrained(tmp_path)
    reloaded = DDPMPipeline.from_pretrained(tmp_path)
    assert type(reloaded.scheduler) is type(scheduler) and reloaded.scheduler.calibrated_steps == [2]


def test_pipeline_saved_when_both_schedulers_shared_a_module_reloads(ddpm_pipe, tmp_path):
    from diffusers import DDPMPipeline

    ddpm_pipe.scheduler = GITSFlowMatchScheduler(gits_sigmas={"2": [1.0, 0.5, 0.0]})
    ddpm_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers_gits.scheduling_gits_flow_match", "GITSFlowMatchScheduler"]
    index["scheduler"] = ["diffusers_gits.scheduling_gits", "GITSFlowMatchScheduler"]  # as diffusers-gits 0.1 wrote it
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert type(DDPMPipeline.from_pretrained(tmp_path).scheduler) is GITSFlowMatchScheduler


def test_stable_diffusion_end_to_end(sd_pipe, tmp_path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

    kwargs = {"height": 32, "width": 32, "guidance_scale": 5.0}
    scheduler = GITSScheduler.from_calibration(
        sd_pipe,
        [2, 4],
        prompts=["a cat", "a dog"],
        num_warmup=4,
        batch_size=2,
        grid_size=11,
        solver="euler",
        progress=False,
        **kwargs,
    )
    assert scheduler.config.calibration["pipeline_class"] == "StableDiffusionPipeline"
    assert scheduler.config.calibration["pipe_kwargs"] == kwargs
    original = sd_pipe.scheduler
    try:
        sd_pipe.scheduler = scheduler
        generator = torch.Generator().manual_seed(0)
        ours = sd_pipe("a fox", num_inference_steps=4, generator=generator, output_type="latent", **kwargs).images
        scheduler.save_pretrained(tmp_path)
        sd_pipe.scheduler = GITSScheduler.from_pretrained(tmp_path)
        again = sd_pipe(
            "a fox", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs
        ).images
        torch.testing.assert_close(ours, again, rtol=0, atol=0)

        # The exported schedule reproduces GITS-euler samples through the stock Euler scheduler.
        sd_pipe.scheduler = EulerDiscreteScheduler.from_config(original.config, timestep_spacing="leading")
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        # With "leading" spacing Euler scales given latents by sqrt(sigma_max^2 + 1), exactly our VP convention, so the
        # same latents go to both.
        stock = sd_pipe(
            "a fox", sigmas=scheduler.sigmas_for(4), latents=latents, output_type="latent", **kwargs
        ).images
        sd_pipe.scheduler = scheduler
        gits = sd_pipe("a fox", num_inference_steps=4, latents=latents, output_type="latent", **kwargs).images
        torch.testing.assert_close(gits, stock, rtol=1e-3, atol=1e-3)

        # img2img slices the schedule by strength and keeps exactly N steps.
        img2img = StableDiffusionImg2ImgPipeline(**sd_pipe.components)
        img2img.scheduler = scheduler
        for strength in (0.3, 0.6, 1.0):
            out = img2img(
                "a fox",
                image=torch.rand(1, 3, 32, 32),
                strength=strength,
                num_inference_steps=4,
                output_type="np",
                guidance_scale=5.0,
            ).images
            assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
    finally:
        sd_pipe.scheduler = original


def test_refine_without_a_held_out_race_leaves_the_search_unchecked(mixture_problem):
    """At a budget the search and screening exhaust, no race runs: refine has nothing to refine on."""
    pipe, _ = mixture_problem
    scheduler = GITSScheduler.from_calibration(
        pipe, [4, 6], num_warmup=16, batch_size=8, refine=True, progress=False, cache=False
    )
    for k in ("4", "6"):
        entry = scheduler.calibration_report[k]
        assert entry["held_out_noises"] == 0 and "unchecked" in entry["summary"] and entry["chosen"] == "gits"


def test_hedge_moves_each_unconfirmed_searched_choice_toward_the_race_best_baseline(mixture_problem):
    from diffusers_gits.noise import SIGMA_PATH
    from diffusers_gits.schedules import log_snr_blend

    pipe, _ = mixture_problem
    options = {"num_warmup": 96, "batch_size": 32, "progress": False, "cache": False}
    plain = GITSScheduler.from_calibration(pipe, [4, 6], **options)
    scheduler = GITSScheduler.from_calibration(pipe, [4, 6], hedge=0.5, **options)
    assert scheduler.calibration_record["hedge"] == 0.5 and plain.calibration_record["hedge"] == 0.0
    assert scheduler.calibration_record["model_calls"] == plain.calibration_record["model_calls"]  # no call more
    hedged = 0
    for k in ("4", "6"):
        entry, before = scheduler.calibration_report[k], plain.calibration_report[k]
        assert entry["candidates"] == before["candidates"]  # the same race
        ours, theirs = np.asarray(scheduler.sigmas_for(int(k))), np.asarray(plain.sigmas_for(int(k)))
        if before["chosen"] not in before["searched_sigmas"] or before["confident"]:
            np.testing.assert_array_equal(ours, theirs)
            assert entry == before
            continue
        hedged += 1
        toward = entry["hedged_toward"]
        assert entry["chosen"] == before["chosen"] + "_hedged" and toward["weight"] == 0.5
        assert toward["name"] in entry["candidates"] and toward["name"] not in entry["searched_sigmas"]
        family_baselines = baseline_schedules(scheduler.noise_schedule, int(k))
        if toward["name"] in family_baselines:  # else TORS, from the teacher's trajectories
            np.testing.assert_allclose(toward["sigmas"], family_baselines[toward["name"]], rtol=1e-12)
        expected = log_snr_blend(theirs, np.asarray(toward["sigmas"]), 0.5, SIGMA_PATH)
        np.testing.assert_allclose(ours, expected, rtol=1e-6)
    assert hedged  # the set-up has an unconfirmed lead to move
