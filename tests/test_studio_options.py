"""The studio's sampler controls, option checks, counts, the work budget and its settings."""

from __future__ import annotations

import dataclasses

import gradio as gr
import pytest
from PIL import Image

from diffusion.machine import cpu_cores, flops_per_pixel
from diffusion.samplers import SAMPLERS, SamplerOptions, SamplerSpec
from diffusion.samplers.ddim import ddim
from studio import models, options, settings
from studio.settings import Settings

from conftest import run_all

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------- options


def test_option_fields_come_from_the_registry():
    fields = options.all_option_fields()
    assert list(fields)[:4] == ["num_inference_steps", "eta", "variance_type", "timestep_spacing"]
    assert "prediction_type" not in fields  # the model's own, never a control
    assert "variance_type" in options.sampler_fields("ddpm") and "eta" not in options.sampler_fields("ddpm")
    assert "eta" in options.sampler_fields("ddim") and "variance_type" not in options.sampler_fields("ddim")


def test_a_newly_registered_sampler_gets_controls_and_options(monkeypatch, pipe):
    @dataclasses.dataclass(frozen=True)
    class ChurnOptions(SamplerOptions):
        num_inference_steps: int = 7
        churn: float = 0.25
        order: int = 2

    monkeypatch.setitem(SAMPLERS, "churny", SamplerSpec("churny", ddim, ChurnOptions, "a test sampler"))
    assert {"churn", "order"} <= set(options.all_option_fields())
    opts = options.make_options(pipe, "churny", {"churn": 0.5, "eta": 0.3, "variance_type": "fixed_large"})
    assert opts.churn == 0.5 and opts.order == 2 and opts.num_inference_steps == 7  # other samplers' values ignored
    with gr.Blocks():
        oc = options.OptionControls(pipe, "churny")
    assert isinstance(oc.controls["churn"], gr.Number) and oc.controls["churn"].visible
    assert oc.controls["eta"].visible is False and oc.controls["num_inference_steps"].value == 7
    ups = oc.updates(pipe, "ddim")
    assert ups[1 + list(oc.controls).index("churn")]["visible"] is False


def test_fewer_evaluation_samplers_get_controls_and_run(studio, pipe):
    """DPM-Solver++, PNDM, Euler and Heun: Literal options as dropdowns (ints too), bools as checkboxes,
    spacing choices per sampler; runs report the model evaluations, not the steps."""
    with gr.Blocks():
        oc = options.OptionControls(pipe, "dpm-solver++")
    order = oc.controls["solver_order"]
    assert isinstance(order, gr.Dropdown) and order.value == 2 and order.visible and order.preprocess(3) == 3
    assert isinstance(oc.controls["skip_prk_steps"], gr.Checkbox) and oc.controls["skip_prk_steps"].visible is False
    assert [v for _, v in oc.controls["timestep_spacing"].choices] == ["leading", "linspace", "trailing"]
    assert (
        "interpolation_type" not in oc.controls and "sigma_min" not in oc.controls
    )  # one allowed value; the checkpoint's
    algorithm = oc.controls["algorithm_type"]
    assert isinstance(algorithm, gr.Dropdown) and [v for _, v in algorithm.choices] == [
        "dpmsolver++",
        "sde-dpmsolver++",
    ]
    assert isinstance(oc.controls["use_karras_sigmas"], gr.Checkbox) and oc.controls["use_karras_sigmas"].visible
    ups = dict(zip(oc.controls, oc.updates(pipe, "pndm")[1:]))
    assert (
        ups["skip_prk_steps"]["visible"]
        and ups["skip_prk_steps"]["value"] is False
        and not ups["solver_order"]["visible"]
    )
    assert oc.updates(pipe, "ddim")[1 + list(oc.controls).index("timestep_spacing")]["choices"][-1] == "quad"
    assert options.make_options(pipe, "dpm-solver++", {"solver_order": 3, "eta": 0.5}).solver_order == 3
    ups = dict(zip(oc.controls, oc.updates(pipe, "euler-ancestral")[1:]))
    assert (
        not ups["use_karras_sigmas"]["visible"]
        and not ups["algorithm_type"]["visible"]
        and ups["timestep_spacing"]["visible"]
    )
    with pytest.raises(gr.Error, match="Only one of"):
        options.make_options(pipe, "heun", {"use_karras_sigmas": True, "use_beta_sigmas": True})
    for sampler, values, message in [
        ("euler", {"timestep_spacing": "quad"}, "is not one of 'leading', 'linspace', 'trailing'"),
        ("pndm", {"num_inference_steps": 3}, "warm-up"),
        ("dpm-solver++", {"num_inference_steps": 1000, "timestep_spacing": "leading"}, "repeats timesteps"),
    ]:
        with pytest.raises(gr.Error, match=message):
            options.make_options(pipe, sampler, values)
    assert options.planned_timesteps(pipe, "heun", options.make_options(pipe, "heun", {"num_inference_steps": 3})) == [
        666,
        333,
        333,
        0,
        0,
    ]
    karras = options.make_options(pipe, "dpm-solver++", {"num_inference_steps": 5, "use_karras_sigmas": True})
    assert options.planned_timesteps(pipe, "dpm-solver++", karras) == [
        999,
        843,
        593,
        142,
        0,
    ]  # diffusers' for Karras sigmas
    for sampler, extra, evaluations in [
        ("dpm-solver++", {}, 5),
        ("euler", {}, 5),
        ("heun", {}, 9),
        ("pndm", {}, 14),
        ("pndm", {"skip_prk_steps": True}, 6),
        ("euler-ancestral", {}, 5),
        ("dpm-solver++", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, 5),
        ("heun", {"use_exponential_sigmas": True}, 9),
    ]:
        *_, (image, grid, info, traj) = run_all(studio.sample(studio.default_model, sampler, 0, 2, steps=5, **extra))
        assert f"5 steps · {evaluations} model evaluations" in info and Image.open(grid).size == (230, 116)
        assert len(traj) == 6 and traj.timesteps[-1] == -1 and len(traj.visited) == 5


def test_make_options_validates_with_clear_messages(pipe):
    opts = options.make_options(pipe, "ddim", {"num_inference_steps": 20, "eta": 0.5, "variance_type": "fixed_large"})
    assert (opts.num_inference_steps, opts.eta) == (20, 0.5)
    assert (
        options.make_options(pipe, "ddpm", {"num_inference_steps": None}).num_inference_steps == 1000
    )  # None: default
    for values, message in [
        ({"num_inference_steps": 0}, "Steps must be a positive integer"),
        ({"num_inference_steps": 1001}, "between 1 and 1000"),
        ({"num_inference_steps": 2.5}, "whole number"),
        ({"eta": 1.5}, "Eta must be between 0"),
        ({"timestep_spacing": "random"}, "is not one of"),
        ({"steps_offset": -5}, r"Steps offset must be a non-negative integer \(every timestep must stay in 0..T-1\)"),
        ({"clip_sample_range": float("nan")}, "Clip range must be a finite number"),
        ({"clip_sample": "maybe"}, "Clip predicted x0 must be true or false"),
        ({"timestep_spacing": "quad", "num_inference_steps": 900}, "quad"),
    ]:
        with pytest.raises(gr.Error, match=message):
            options.make_options(pipe, "ddim", values)
    with pytest.raises(gr.Error, match="Unknown sampler 'euler-x'; choose one of"):
        options.make_options(pipe, "euler-x", {})


@pytest.mark.parametrize("seed", [-1, 1.5, None, "x", 2**53, True])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(gr.Error, match="seed"):
        options.check_count(seed, "The seed", 0, settings.MAX_SEED)


@pytest.mark.parametrize("field", ["steps", "seed", "num_images"])
def test_non_integer_counts_are_refused_not_rounded(studio, field):
    args = dict(model=studio.default_model, sampler="ddim", seed=0, num_images=1, steps=5) | {field: 2.5}
    with pytest.raises(gr.Error, match="whole number"):
        run_all(studio.sample(**args))
    assert options.check_count(3.0, "n", 1, 5) == 3  # a number widget's 3.0 is fine


def test_work_budget_is_stated_and_enforced(tiny_model, pipe):
    store = models.ModelStore(Settings(default_model=tiny_model, compile=False, max_work=64 * 1000 * 10))
    budget = store.work_budget(pipe)
    assert budget == 640_000  # the tiny model costs less than REFERENCE_FLOPS: the full budget
    assert store.check_work(pipe, 10, 1000, "tiny") == 640_000
    with pytest.raises(
        gr.Error,
        match=r"11 images × 8×8 pixels × 1000 steps = 704,000 pixel-steps.*budget of 640,000.*"
        r"at most 909 steps with 11 images or at most 10 images with 1000 steps",
    ):
        store.check_work(pipe, 11, 1000, "tiny")
    assert "≤ **640,000**" in store.describe(pipe, "tiny")


def test_work_counts_model_evaluations_not_steps(pipe):
    count = {
        s: options.evaluations(pipe, s, pipe.sampler_options(s, num_inference_steps=10))
        for s in ("ddim", "heun", "pndm")
    }
    assert count == {"ddim": 10, "heun": 19, "pndm": 19}


def test_costlier_models_get_a_smaller_budget(studio, pipe, monkeypatch):
    assert 0 < flops_per_pixel(pipe.unet.config) < settings.REFERENCE_FLOPS  # counted on the meta device
    assert studio.store.flops(pipe) == flops_per_pixel(pipe.unet.config)
    monkeypatch.setitem(studio.store._flops, pipe.unet, 20 * settings.REFERENCE_FLOPS)
    assert studio.store.work_budget(pipe) == studio.settings.max_work // 20


def test_cpu_cores(monkeypatch):
    monkeypatch.delenv("CPU_CORES", raising=False)
    available = cpu_cores()
    assert available >= 1
    monkeypatch.setenv("CPU_CORES", "1")
    assert cpu_cores() == 1
    for bad in ("many", str(available + 1)):  # more cores than the machine gives is refused, not taken
        monkeypatch.setenv("CPU_CORES", bad)
        with pytest.raises(ValueError, match=f"CPU_CORES must be a whole number from 1 to {available} "):
            cpu_cores()


def test_settings_come_from_the_environment_at_start_not_import(monkeypatch):
    monkeypatch.setenv("MAX_WORK", "1e6")
    monkeypatch.setenv("COMPILE", "0")
    monkeypatch.setenv("QUEUE_SIZE", "7")
    s = Settings.from_env(default_model="x/y")
    assert (s.max_work, s.compile, s.queue_size, s.default_model) == (1_000_000, False, 7, "x/y")
    monkeypatch.setenv("MAX_MODELS", "lots")
    with pytest.raises(ValueError, match="MAX_MODELS must be a whole number from 1 to 32, got 'lots'"):
        Settings.from_env()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_work = 5
