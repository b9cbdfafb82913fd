"""`compare`: schedules scored on a model against the fine teacher on fresh noises, as a table and PNGs."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffusers_gits import GITSScheduler
from diffusers_gits.calibration.recorder import noise_seed
from diffusers_gits.cli import main
from diffusers_gits.compare import FRESH_NOISES_START, compare_schedules, format_table
from diffusers_gits.embedded import load_embedded_pipeline
from diffusers_gits.schedules import baseline_schedules
from diffusers_gits.solvers import sample
from diffusers_gits.testing.gaussian_mixture import GaussianMixture, GaussianMixturePipeline


# clip_sample=False: DDPMScheduler clips x0 to [-1, 1] by default, and the exact mixture lives outside it.
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False}


def test_compare_ranks_schedules_as_the_exact_solution_does():
    mixture = GaussianMixture.random(num_components=2, seed=1)
    pipe = GaussianMixturePipeline(mixture, DDPMScheduler(**SD_BETAS))
    table = compare_schedules(pipe, [4, 6], ["uniform", "karras", "logsnr"], num_noises=48, batch_size=48)
    used = [noise_seed(0, FRESH_NOISES_START + i) for i in range(48)]  # the noises it used
    z = pipe.start_noise([torch.Generator().manual_seed(seed) for seed in used])
    sigma_max = pipe.noise.sigma_max
    exact = mixture.exact_solution(z * (1 + sigma_max**2) ** 0.5, [sigma_max, pipe.noise.sigma_min, 0.0], 1000)
    for k in (4, 6):
        errors = {}
        for name, sigmas in baseline_schedules(pipe.noise, k).items():
            if name in table:
                out = sample(mixture.denoiser, z * (1 + float(sigmas[0]) ** 2) ** 0.5, sigmas, "dpmpp_2m")
                errors[name] = float((out - exact).pow(2).mean(1).sqrt().mean())
                assert table[name][k]["mean_rmse"] == pytest.approx(errors[name], rel=0.02, abs=1e-3)
        best = min(errors, key=errors.get)
        assert table[best][k]["minus_best"] == 0 and all(row[k]["minus_best"] >= 0 for row in table.values())
        assert all(row[k]["pooled_rmse"] >= row[k]["mean_rmse"] - 1e-12 for row in table.values())


def test_compare_on_the_embedded_model_with_a_saved_gits_schedule(tmp_path):
    pipe = load_embedded_pipeline("digits")
    saved = GITSScheduler.from_config(pipe.scheduler.config, gits_sigmas={"3": [14.6146, 2.0, 0.3, 0.0]})
    saved.save_pretrained(tmp_path / "gits")
    table = compare_schedules(
        pipe, 3, ["default", "karras", f"gits:{tmp_path / 'gits'}"], num_noises=8, batch_size=8,
        output_dir=tmp_path / "out",
    )  # fmt: skip
    assert set(table) == {"default", "karras", f"gits:{tmp_path / 'gits'}"}
    assert all(np.isfinite(row[3]["mean_rmse"]) and row[3]["ci"] >= 0 for row in table.values())
    assert (tmp_path / "out" / "error_vs_nfe.png").stat().st_size > 0
    assert (tmp_path / "out" / "samples_nfe3.png").stat().st_size > 0  # pixel-space model: a sample grid
    text = format_table(table)
    assert "karras" in text and "best" in text


def test_compare_on_a_tiny_stable_diffusion_pipeline(sd_pipe, tmp_path):
    table = compare_schedules(
        sd_pipe, [2, 3], ["default", "karras", "ays"], prompts=["a cat"], num_noises=4, batch_size=4, grid_size=11,
        height=32, width=32, guidance_scale=5.0, output_dir=tmp_path,
    )  # fmt: skip
    assert set(table) == {"default", "karras", "ays"} and all(set(row) == {2, 3} for row in table.values())
    assert (tmp_path / "error_vs_nfe.png").exists() and not list(tmp_path.glob("samples_*.png"))  # latents: no grid


def test_compare_rejects_unknown_schedules_and_too_few_noises():
    pipe = GaussianMixturePipeline(GaussianMixture.random(), DDPMScheduler(**SD_BETAS))
    with pytest.raises(ValueError, match="'heun_spacing' is not known"):
        compare_schedules(pipe, [4], ["heun_spacing"])
    with pytest.raises(ValueError, match="num_noises"):
        compare_schedules(pipe, [4], ["karras"], num_noises=1)
    with pytest.raises(ValueError, match="empty"):
        compare_schedules(pipe, [4], [])


def test_compare_command(tmp_path, capsys):
    from conftest import tiny_ddpm_pipe

    tiny_ddpm_pipe().save_pretrained(tmp_path / "model")
    argv = ["compare", str(tmp_path / "model"), "--steps", "2", "--schedules", "default", "karras",
            "--num-noises", "4", "--output", str(tmp_path / "cmp")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "karras" in printed and "RMSE" in printed and (tmp_path / "cmp" / "error_vs_nfe.png").exists()
    assert main(["compare", str(tmp_path / "model"), "--steps", "2", "--schedules", "nope"]) == 1
    assert "'nope' is not known" in capsys.readouterr().err


def test_compare_scores_tors_from_teacher_trajectories_of_other_noises():
    pipe = GaussianMixturePipeline(GaussianMixture.random(num_components=2, seed=1), DDPMScheduler(**SD_BETAS))
    table = compare_schedules(pipe, [4, 6], ["uniform", "tors"], num_noises=16, batch_size=16, grid_size=21)
    assert list(table) == ["uniform", "tors"]
    assert all(np.isfinite(table["tors"][k]["pooled_rmse"]) for k in (4, 6))
    assert min(table["tors"][k]["minus_best"] for k in (4, 6)) >= 0
    assert table["tors"][4]["pooled_rmse"] != table["uniform"][4]["pooled_rmse"]  # a schedule of its own
