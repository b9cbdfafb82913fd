import subprocess
import sys

import pytest

from diffusers_gits import CalibrationError
from diffusers_gits.cli import build_parser, main


def test_help_lists_demo_and_examples(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--solver" in out and "dpmpp_2m" in out


@pytest.mark.parametrize("argv", [["demo", "--solver", "heun"], ["demo", "--steps", "0"], ["frobnicate"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "usage:" in capsys.readouterr().err


def test_demo_runs_on_the_embedded_model(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffusers_gits",
            "demo",
            "--output",
            str(tmp_path),
            "--steps",
            "3",
            "5",
            "--num-warmup",
            "64",
            "--num-test",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "RMSE to reference" in result.stdout and "gits / best baseline" in result.stdout
    assert (tmp_path / "error_vs_nfe.png").stat().st_size > 0 and (tmp_path / "samples_nfe5.png").exists()
    assert (tmp_path / "scheduler" / "scheduler_config.json").exists()


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
