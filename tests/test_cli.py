import subprocess
import sys

import pytest

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
