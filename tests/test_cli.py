import json

import pytest

from diffusers_gits import CalibrationError
from diffusers_gits.cli import build_parser, main


def test_help_lists_demo_and_examples(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--solver" in out and "dpmpp_2m" in out


@pytest.mark.parametrize("command", [[], ["demo"], ["calibrate"], ["compare"], ["analyze"], ["show"], ["push"]])
def test_every_help_text_prints(command, capsys):
    with pytest.raises(SystemExit) as info:
        main(command + ["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "usage:" in out
    if not command:
        assert all(name in out for name in ("demo", "calibrate", "compare", "analyze", "show", "push"))


@pytest.mark.parametrize("argv", [["demo", "--solver", "heun"], ["demo", "--steps", "0"], ["frobnicate"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["sd", "flow"])
def test_demo_turns_prompts_into_labelled_images(model, tmp_path, capsys):
    argv = [
        "demo",
        "--model",
        model,
        "--output",
        str(tmp_path),
        "--steps",
        "2",
        "--num-warmup",
        "6",
        "--num-test",
        "4",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Pooled RMSE to the reference" in out and "gits / best" in out and "Prompt adherence" in out
    results = json.loads((tmp_path / "results.json").read_text())
    verdict = results["calibration"]["verdicts"]["2"]
    saved = json.loads((tmp_path / "scheduler" / "calibration_report.json").read_text())
    assert f"NFE 2: {verdict}" in out and verdict == saved["report"]["2"]["summary"]
    assert (
        "reference (50 steps)" in out
        and ("PNDMScheduler" if model == "sd" else "FlowMatchEulerDiscreteScheduler") in out
    )
    assert (tmp_path / "error_vs_nfe.png").stat().st_size > 0 and (tmp_path / "samples_nfe2.png").stat().st_size > 0
    assert (tmp_path / "scheduler" / "scheduler_config.json").exists()
    baselines = (
        ["default", "karras", "ays", "sd15"]
        if model == "sd"
        else ["default", "uniform", "shifted", "beta", "oss_flux"]
    )
    assert all(name in results["rmse"] for name in baselines + ["gits (calibrated)"])
    assert all(0 <= rate <= 1 for row in results["adherence"].values() for rate in row.values())


def test_calibrate_show_and_push_commands(tmp_path, hub, capsys):
    from conftest import tiny_ddpm_pipe

    model = tmp_path / "tiny-ddpm"
    tiny_ddpm_pipe().save_pretrained(model)
    out = tmp_path / "out"
    argv = [
        "calibrate",
        str(model),
        "--steps",
        "2",
        "3",
        "--num-warmup",
        "16",
        "--batch-size",
        "8",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    assert {"scheduler_config.json", "README.md", "schedules.png"} <= {p.name for p in out.iterdir()}
    assert main(["show", str(out), "--plot", str(tmp_path / "plot.png")]) == 0
    printed = capsys.readouterr().out
    assert "held-out RMSE" in printed and (tmp_path / "plot.png").exists()
    assert main(["push", str(out), "me/tiny-gits", "--subfolder", "ddpm"]) == 0
    assert "pushed: " in capsys.readouterr().out
    assert main(["show", "me/tiny-gits", "--plot", str(tmp_path / "hub.png")]) == 0
    assert "me/tiny-gits/ddpm" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["show", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("diffusers-gits: error:") and "holds no scheduler_config.json" in err
    assert main(["calibrate", str(tmp_path / "missing"), "--steps", "4", "--output", str(tmp_path / "o")]) == 1


def test_a_programming_error_keeps_its_traceback(tmp_path, monkeypatch):
    from diffusers_gits import cli

    def broken(args):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(cli, "run_show", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["show", str(tmp_path)])
    monkeypatch.setattr(cli, "run_show", lambda args: (_ for _ in ()).throw(CalibrationError("NaN at grid step 3")))
    assert main(["show", str(tmp_path)]) == 1  # the package's own errors stay one line


@pytest.mark.parametrize(
    "choice, device, components, expected",
    [
        ("auto", "cpu", ["unet", "vae"], "float32"),
        ("auto", "cuda", ["unet", "vae"], "float16"),
        ("auto", "cuda:1", ["transformer", "vae"], "bfloat16"),
        ("float32", "cuda", ["transformer"], "float32"),
        ("bfloat16", "cpu", ["unet"], "bfloat16"),
    ],
)
def test_dtype_choice(choice, device, components, expected):
    import torch

    from diffusers_gits.cli import resolve_dtype

    assert resolve_dtype(choice, device, {name: ["diffusers", "X"] for name in components}) == getattr(torch, expected)


def test_dtype_is_a_choice(capsys):
    with pytest.raises(SystemExit):
        main(["calibrate", "m", "--steps", "4", "--output", "o", "--dtype", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["sd", "flow"])
def test_demo_calibrates_on_its_model_s_warm_up_count_unless_told(model, tmp_path, monkeypatch):
    import diffusers_gits.demo as demo

    seen = []

    def stop(pipe, steps, solver, num_warmup, *args, **kwargs):
        seen.append(num_warmup)
        raise KeyboardInterrupt  # nothing after the calibration is under test

    monkeypatch.setattr(demo, "calibrate_with_prompts", stop)
    for argv in (["demo", "--model", model], ["demo", "--model", model, "--num-warmup", "7"]):
        with pytest.raises(KeyboardInterrupt):
            main([*argv, "--output", str(tmp_path)])
    assert seen == [demo.DEMO_WARMUP[model], 7] and demo.DEMO_WARMUP == {"sd": 64, "flow": 32}
