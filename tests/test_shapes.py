import numpy as np
import pytest
import torch

from diffusers_gits import shapes


def test_dataset_is_deterministic_from_its_seed():
    a, specs_a = shapes.shapes_dataset(16, seed=3)
    b, specs_b = shapes.shapes_dataset(16, seed=3)
    c, _ = shapes.shapes_dataset(16, seed=4)
    assert torch.equal(a, b) and specs_a == specs_b and not torch.equal(a, c)
    assert a.shape == (16, 3, 32, 32) and a.min() >= -1 and a.max() <= 1


def test_render_draws_the_spec():
    spec = shapes.ShapeSpec("square", "red", "blue", cx=16, cy=16, half=6)
    image = shapes.render(spec)
    assert np.allclose(image[0, 0], shapes.PALETTE["blue"], atol=1e-6)  # background in the corner
    assert np.allclose(image[16, 16], shapes.PALETTE["red"], atol=1e-6)  # shape in the centre
    assert np.allclose(image[16, 8], shapes.PALETTE["blue"], atol=1e-6)  # outside the half-extent
    assert spec.prompt == "a red square on a blue background"
    assert shapes.ShapeSpec("circle", "red", "blue", 16, 16, 6, names_background=False).prompt == "a red circle"


def test_referee_reads_every_generated_image():
    images, specs = shapes.shapes_dataset(600, seed=7)
    for image, spec in zip(images, specs):
        assert shapes.read_image(image) == {"shape": spec.shape, "colour": spec.colour, "background": spec.background}


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_referee_reads_the_smallest_shapes(shape):
    spec = shapes.ShapeSpec(shape, "white", "black", cx=10.3, cy=21.7, half=shapes.MIN_HALF)
    assert shapes.read_image(shapes.render(spec))["shape"] == shape


def test_referee_accepts_pil_arrays_and_tensors():
    from PIL import Image

    spec = shapes.ShapeSpec("triangle", "yellow", "green", cx=15, cy=17, half=9)
    array = shapes.render(spec)
    pil = Image.fromarray((array * 255).round().astype(np.uint8))
    tensor = torch.from_numpy(array).permute(2, 0, 1) * 2 - 1
    expected = {"shape": "triangle", "colour": "yellow", "background": "green"}
    assert shapes.read_image(array) == shapes.read_image(pil) == shapes.read_image(tensor) == expected


def test_referee_sees_no_shape_on_a_plain_image():
    plain = np.broadcast_to(np.asarray(shapes.PALETTE["green"]), (32, 32, 3))
    assert shapes.read_image(plain) == {"shape": None, "colour": None, "background": "green"}


def test_adherence_counts_each_attribute():
    red_circle_on_blue = shapes.render(shapes.ShapeSpec("circle", "red", "blue", 16, 16, 8))
    images = [red_circle_on_blue] * 4
    prompts = [
        "a red circle on a blue background",  # all right
        "a red circle",  # all right, no background asked
        "a green circle on a blue background",  # wrong colour
        "a red square on a white background",  # wrong shape and background
    ]
    assert shapes.prompt_adherence(images, prompts) == {
        "all": 0.5,
        "shape": 0.75,
        "colour": 0.75,
        "background": 2 / 3,
    }


@pytest.mark.parametrize(
    "prompt", ["a purple circle", "red circle", "a red circle on blue", "a red circle on a red backdrop", ""]
)
def test_parse_prompt_refuses_other_text(prompt):
    with pytest.raises(ValueError, match="not a shapes caption"):
        shapes.parse_prompt(prompt)


def test_adherence_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        shapes.prompt_adherence([np.zeros((32, 32, 3))] * 2, ["a red circle"])


def test_prompts_grid_draws_training_captions():
    prompts = shapes.prompts_grid(50, seed=1)
    assert prompts == shapes.prompts_grid(50, seed=1)
    assert all(shapes.parse_prompt(p) for p in prompts)
    assert any(len(p.split()) == 3 for p in prompts) and any(len(p.split()) == 7 for p in prompts)
