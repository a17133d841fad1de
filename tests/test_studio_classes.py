"""The studio with a class-conditional model: a class picker and a guidance slider on Sample, Compare and
Explore, hidden for an unconditional model; deep links and the API carry class and guidance."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from diffusion import DiffusionPipeline, UNet, UNetConfig
from diffusion.classes import ClassInfo
from studio import ui
from studio.class_controls import ONE_OF_EACH, read_labels
from studio.explore import Explore

from conftest import TINY_16, make_studio, write_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
COND = UNetConfig(**TINY_16, num_class_embeds=4)
NAMES = ("Shirt", "Sneaker", "Bag")


def write_cond_model(path: Path) -> Path:
    """A tiny class-conditional model (3 named classes and the null label) whose labels change its output."""
    torch.manual_seed(0)
    unet = UNet(COND)
    with torch.no_grad():
        unet.class_embedding.weight.normal_(0, 2.0)
    DiffusionPipeline(unet, {}, classes=ClassInfo(NAMES, 3, 2.0)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cond_model(tmp_path_factory) -> str:
    return str(write_cond_model(tmp_path_factory.mktemp("models") / "cond"))


@pytest.fixture(scope="module")
def studio(cond_model):
    return make_studio(cond_model)


def last(gen) -> tuple:
    return list(gen)[-1]


def picture(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


def sample(studio, **kw) -> tuple:
    args = dict(model=studio.default_model, sampler="ddim", seed=3, num_images=2, steps=5)
    return last(studio.sample(**{**args, **kw}))


def test_sample_one_class_by_name_or_index_at_a_guidance_scale(studio):
    by_name = sample(studio, class_label="sneaker", guidance_scale=3.0)
    by_index = sample(studio, class_label="1", guidance_scale=3.0)
    assert np.array_equal(picture(by_name[0]), picture(by_index[0]))
    assert "**2 images** · class Sneaker · guidance 3 · DDIM" in by_name[2]
    other_scale = sample(studio, class_label="1", guidance_scale=0.0)
    other_class = sample(studio, class_label="2", guidance_scale=3.0)
    assert not np.array_equal(picture(by_name[0]), picture(other_scale[0]))
    assert not np.array_equal(picture(by_name[0]), picture(other_class[0]))
    default = sample(studio, class_label="1", guidance_scale=None)  # the model's recommended scale
    assert "guidance 2 ·" in default[2]


def test_one_of_each_is_a_row_per_class_from_the_same_noise(studio):
    shown, grid, info, traj = sample(studio, class_label=ONE_OF_EACH, guidance_scale=2.0)
    assert "**6 images** · one of each class · guidance 2" in info and "class-all" in Path(grid).name
    rows = picture(grid)
    assert rows.shape[0] > rows.shape[1]  # 3 rows of 2
    one = picture(sample(studio, class_label="0", guidance_scale=2.0)[1])
    assert np.array_equal(rows[: one.shape[0]], one)  # the first row is class 0 from the same x_T


def test_bad_class_requests_are_refused_in_the_result_line(studio):
    with pytest.raises(gr.Error, match="'dress' is not a class of this model; give an index or a name: 0 Shirt"):
        list(studio.sample(studio.default_model, "ddim", 0, 2, class_label="dress", steps=5))
    outputs = []
    with pytest.raises(gr.Error, match="One of each class is 3 rows of 30 images, 90 in all, above 64"):
        for out in studio.sample(studio.default_model, "ddim", 0, 30, class_label=ONE_OF_EACH, steps=5):
            outputs.append(out)
    assert outputs[-1][2].startswith("**Not run:** One of each class")
    with pytest.raises(gr.Error, match="guidance_scale must be between 0 and 20"):
        list(studio.sample(studio.default_model, "ddim", 0, 2, class_label="0", guidance_scale=25, steps=5))


def test_guided_requests_count_twice_against_the_budget(cond_model):
    small = make_studio(cond_model, max_work=21_000)  # 16 images x 64 pixels x 10 steps x 2 passes = 20,480
    sample(small, class_label="0", guidance_scale=3.0, steps=10, num_images=16)
    sample(small, class_label="0", guidance_scale=1.0, steps=20, num_images=16)  # one pass: twice the steps fit
    with pytest.raises(gr.Error, match=r"16 images × 8×8 pixels × 11 steps × 2 passes \(guidance: the class and the "
                                       r"null label\) = 22,528 pixel-steps.*at most 10 steps.*or guidance 0 or 1"):
        sample(small, class_label="0", guidance_scale=3.0, steps=11, num_images=16)


def test_compare_two_guidance_scales_of_one_class(studio):
    a, b, pair, diff, md, metrics = last(studio.compare(
        studio.default_model, 1, 2, class_label="bag", a_sampler="ddim", a_steps=5, a_guidance_scale=1.0,
        b_sampler="ddim", b_steps=5, b_guidance_scale=4.0,
    ))
    assert metrics["class"] == "Bag" and metrics["a"]["guidance_scale"] == 1.0 and metrics["b"]["guidance_scale"] == 4
    assert "Class **Bag** in both panels" in md and "| Guidance scale | 1 | 4 |" in md
    assert metrics["difference"]["max_abs_difference"] > 0


def test_explore_decodes_one_noise_as_two_classes_and_in_between(studio):
    explore = Explore(studio)
    strip, gif, info = last(explore.interpolate(studio.default_model, 5, 5, 3, 5, class_a="0", class_b="2",
                                                guidance_scale=2.0))
    assert "from class Shirt to Bag · guidance 2" in info
    same = last(explore.interpolate(studio.default_model, 5, 5, 3, 5, class_a="0", class_b="0", guidance_scale=2.0))
    assert "· class Shirt ·" in same[2]
    frames, frames_same = picture(strip), picture(same[0])
    w = frames.shape[1] // 3
    assert np.array_equal(frames[:, :w], frames_same[:, :w])  # frame 0 is class A on the same x_T
    assert not np.array_equal(frames[:, -w:], frames_same[:, -w:])  # the last is class B
    grid, info = last(explore.consistency(studio.default_model, 0, 2, [5, 10], class_label="1", guidance_scale=2.0))
    assert "class Sneaker · guidance 2" in info


def test_an_unconditional_model_ignores_the_hidden_class_controls(tmp_path):
    plain = make_studio(str(write_tiny_model(tmp_path / "plain")))
    a = sample(plain, class_label="7", guidance_scale=5.0)
    b = sample(plain)
    assert np.array_equal(picture(a[0]), picture(b[0])) and "class" not in a[2]
    assert read_labels(plain.store.get(plain.default_model), "7", 5.0).rows is None


def controls_by_id(demo: gr.Blocks) -> dict[str, gr.components.Component]:
    return {c.elem_id: c for c in demo.blocks.values() if getattr(c, "elem_id", None)}


def test_class_controls_show_for_a_conditional_model_only(studio, tmp_path):
    shown = controls_by_id(ui.build_app(studio))
    for elem in ("s_class", "s_guidance", "c_class", "a_guidance", "b_guidance", "i_class_a", "i_class_b",
                 "i_guidance", "r_class", "k_class", "k_guidance"):
        assert shown[elem].visible, elem
    assert [c[0] for c in shown["s_class"].choices][-1] == "One of each (a row per class)"
    assert shown["s_guidance"].value == 2.0 and shown["i_class_b"].value == "2"
    plain = controls_by_id(ui.build_app(make_studio(str(write_tiny_model(tmp_path / "plain")))))
    assert not any(plain[e].visible for e in ("s_class", "s_guidance", "c_class", "i_class_a", "k_guidance"))


def test_a_conditional_model_costs_what_its_unconditional_twin_costs(cond_model, tmp_path):
    """FLOPs are counted with labels for a class-conditional UNet (it needs them): the same budget as its twin."""
    from diffusion.machine import flops_per_pixel

    cond = make_studio(cond_model).store
    plain = make_studio(str(write_tiny_model(tmp_path / "plain"))).store
    c, p = (s.get(s.default) for s in (cond, plain))
    assert flops_per_pixel(c.unet.config) == pytest.approx(flops_per_pixel(p.unet.config), rel=0.01)
    assert cond.work_budget(c) == plain.work_budget(p)
