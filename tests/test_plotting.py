import matplotlib
import numpy as np
import pytest
from PIL import Image

from diffusers_gits.plotting import save_error_plot, save_labelled_grid


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        save_error_plot({"gits": {4: 0.1, 6: 0.05}, "karras": {4: 0.2, 6: 0.1}}, tmp_path / "e.png", "title")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert Image.open(tmp_path / "e.png").size[0] > 100


def test_labelled_grid_has_a_cell_per_image(tmp_path):
    rows = {"stock": np.zeros((3, 8, 8, 3)), "gits": np.ones((3, 8, 8, 3))}
    path = save_labelled_grid(rows, ["a red circle", "a blue square", "a white triangle"], tmp_path / "g.png", "t")
    small = Image.open(path)
    save_labelled_grid({**rows, "reference": np.ones((3, 8, 8, 3))}, ["a", "b", "c"], tmp_path / "h.png", "t")
    assert Image.open(tmp_path / "h.png").size[1] > small.size[1]  # one more row, a taller figure


def test_labelled_grid_refuses_a_short_row(tmp_path):
    with pytest.raises(ValueError, match="row 'gits' has 2 images for 3 columns"):
        save_labelled_grid({"gits": np.zeros((2, 8, 8, 3))}, ["a", "b", "c"], tmp_path / "g.png", "t")


def test_without_matplotlib_the_schedule_folder_is_written_without_its_plot(tmp_path, monkeypatch):
    """matplotlib is optional (the `plots` extra): a push still writes the config, the record and the card."""
    import json

    import pytest

    from diffusers_gits import GITSScheduler, plotting
    from diffusers_gits.model_card import write_schedule_folder

    monkeypatch.setattr(plotting, "plots_available", lambda: False)
    config = json.loads(GITSScheduler.from_preset("sd15").to_json_string())
    folder = write_schedule_folder(config, tmp_path / "out", repo_id="me/sd15-gits")
    assert (folder / "scheduler_config.json").is_file() and (folder / "README.md").is_file()
    assert not (folder / "schedules.png").exists()
    with pytest.raises(ImportError, match=r"diffusers-gits\[plots\]"):
        plotting.save_schedule_plot({2: [14.6, 1.0, 0.0]}, tmp_path / "plot.png")
