"""Calibration settings: validated before any model call, defaults filled in, and the one source of the cache
key's, the checkpoint's and the metadata's fields."""

import inspect
import json

import pytest
import torch
from diffusers import DDPMScheduler

from diffusers_gits import GITSScheduler
from diffusers_gits.calibration.settings import CalibrationSettings, student_search_calls
from diffusers_gits.model_card import CARD_FIELDS
from diffusers_gits.testing.gaussian_mixture import GaussianMixture, GaussianMixturePipeline


# clip_sample=False: DDPMScheduler clips x0 to [-1, 1] by default, and the exact mixture lives outside it.
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False}


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"num_inference_steps": []}, ValueError, "empty"),
        ({"num_inference_steps": [0, 4]}, ValueError, ">= 1"),
        ({"num_inference_steps": [4.0]}, TypeError, "must be an int"),
        ({"num_inference_steps": [70]}, ValueError, "larger than the grid"),
        ({"num_warmup": 0}, ValueError, "num_warmup"),
        ({"solver": "heun"}, ValueError, "'heun'"),
        ({"teacher": "euler"}, ValueError, "teacher"),
        ({"metric": "l3"}, ValueError, "'l3'"),
        ({"coeff": -1.0}, ValueError, "coeff"),
        ({"coeff": "best", "jump_cost": "euler"}, ValueError, "coeff"),
        ({"jump_cost": "heun"}, ValueError, "'heun'"),
        ({"metric": "l1"}, ValueError, "jump_cost='euler'"),
        ({"budget": 0.5, "num_search": 32}, ValueError, "budget=0.5 allows"),
        ({"budget": 0}, ValueError, "budget"),
        ({"confidence": 1.0}, ValueError, "confidence"),
        ({"num_search": 65}, ValueError, "num_search"),
        ({"jump_cost": "euler", "refine": True, "num_holdout": 0}, ValueError, "held-out"),
        ({"num_holdout": 64}, ValueError, "num_holdout"),
        ({"generator": None}, ValueError, "generator"),
        ({"num_images_per_prompt": 2}, ValueError, "num_images_per_prompt"),
        ({"prompt_embeds": torch.zeros(2, 8, 32)}, ValueError, "batch 2"),
    ],
)
def test_bad_input_fails_before_any_model_call(kwargs, error, match):
    calls = []
    pipe = GaussianMixturePipeline(GaussianMixture.random(), DDPMScheduler(**SD_BETAS))
    pipe.__class__ = type("Spy", (GaussianMixturePipeline,), {"__call__": lambda self, **kw: calls.append(kw)})
    args = {"num_inference_steps": [4], "num_warmup": 64, "batch_size": 16, "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        GITSScheduler.from_calibration(pipe, **args)
    assert calls == []


def create(num_inference_steps, **overrides) -> CalibrationSettings:
    """Settings with `calibrate`'s defaults: every setting is a parameter of the public signature."""
    from diffusers_gits.calibration import calibrate

    public = inspect.signature(calibrate).parameters
    defaults = {name: public[name].default for name in CalibrationSettings.option_names()}
    pipe_kwargs = overrides.pop("pipe_kwargs", {})
    return CalibrationSettings.create(num_inference_steps, pipe_kwargs, **{**defaults, **overrides})


def test_every_setting_is_an_option_of_calibrate_and_nothing_else_is_taken():
    from diffusers_gits.calibration import calibrate

    public = inspect.signature(calibrate).parameters
    assert set(CalibrationSettings.option_names()) <= set(public)
    assert {"steps", "pipe_kwargs"}.isdisjoint(CalibrationSettings.option_names())
    options = {name: public[name].default for name in CalibrationSettings.option_names() if name != "seed"}
    with pytest.raises(TypeError, match=r"missing \['seed'\], unknown \['sede'\]"):
        CalibrationSettings.create(4, {}, **options, sede=1)


def test_defaults_fill_in_from_the_budget():
    settings = create([4, 5, 6, 8, 10])
    # Half the budget (2 x 256 x 61 calls) buys 24 search noises at 122 teacher + 513 search calls each.
    assert student_search_calls([10], 61, 1) == 513
    assert settings.num_search == 24 and settings.num_holdout == 232 and settings.call_limit == 31232
    assert settings.coeff is None and settings.steps == (4, 5, 6, 8, 10)
    teacher_priced = create(6, jump_cost="euler", num_warmup=64)
    assert teacher_priced.coeff == "auto" and teacher_priced.num_search == 48 and teacher_priced.num_holdout == 16


def test_arrivals_per_node_prices_the_search_and_is_checked():
    # A second arrival per node adds a pass per layer after the first (one path into each node) over every node
    # but the layer's first (one path into it), plus the pass's throw-away call.
    assert student_search_calls([10], 61, 1, 2) == 513 + sum(61 - k for k in range(2, 10))
    assert create([4, 5, 6, 8, 10], arrivals_per_node=2).num_search == 14  # 2 x 256 x 61 / 2 / (122 + 957)
    with pytest.raises(ValueError, match="arrivals_per_node must be >= 1, got 0"):
        create(4, arrivals_per_node=0)
    with pytest.raises(TypeError, match="arrivals_per_node must be an int, got 1.5"):
        create(4, arrivals_per_node=1.5)
    with pytest.raises(ValueError, match="arrivals_per_node=3 is for the student search; jump_cost='euler'"):
        create(4, arrivals_per_node=3, jump_cost="euler")


@pytest.mark.parametrize(
    "options,match",
    [
        ({"hedge": 1.0}, r"hedge must be a number in \[0, 1\) \(0: off\), got 1.0"),
        ({"hedge": -0.1}, r"got -0.1"),
        ({"hedge": True}, r"got True"),
        ({"hedge": "half"}, r"got 'half'"),
        ({"hedge": 0.5, "num_holdout": 0}, "it needs num_holdout > 0"),
    ],
)
def test_hedge_is_checked(options, match):
    with pytest.raises(ValueError, match=match):
        create(4, **options)


def test_hedge_is_a_plain_float_and_off_by_default():
    assert create(4).hedge == 0.0
    hedge = create(4, hedge=1 / 2).hedge
    assert hedge == 0.5 and type(hedge) is float
    assert create(4, hedge=0.5, jump_cost="euler").hedge == 0.5  # the race's best baseline needs no screening


def test_fields_for_the_key_the_checkpoint_and_the_metadata():
    settings = create(
        [6, 4, 6], prompts=["a fox"], batch_size=8, pipe_kwargs={"guidance_scale": 7.5, "latents": torch.zeros(1)}
    )
    result = settings.result_fields()
    assert "batch_size" not in result and result["steps"] == [4, 6] and result["prompts"] == ["a fox"]
    assert settings.checkpoint_fields() == {**result, "batch_size": 8}
    metadata = settings.metadata()
    json.dumps(metadata)  # plain JSON: the tensor kwarg is left out
    assert metadata["pipe_kwargs"] == {"guidance_scale": 7.5} and metadata["num_prompts"] == 1
    assert set(CARD_FIELDS) <= set(metadata)
