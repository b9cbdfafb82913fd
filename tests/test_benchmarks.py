"""The benchmark scripts stay runnable: each parses its arguments after importing everything it uses."""

import subprocess
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", sorted(path.name for path in BENCHMARKS.glob("*.py")))
def test_benchmark_script_imports_and_shows_its_help(script):
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=BENCHMARKS, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")


def test_every_row_but_the_calibrated_schedules_is_a_baseline(monkeypatch):
    """The published GITS SD1.5 table is a baseline the default must beat, though its name starts like ours."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import quality

    row = lambda pooled: {k: {"pooled": pooled, "rmse": pooled} for k in quality.NFES}  # noqa: E731
    table = {
        "ays_sd15": row(0.2),
        "gits_sd15_published": row(0.1),
        "gits_default": row(0.12),
        "gits_search": row(0.05),
    }
    assert quality.best_baseline(table, 4) == "gits_sd15_published"
    assert quality.ratio_cells(table)[0] == "1.20 (vs gits_sd15_published)"
