"""The studio (the ``studio`` package behind app.py): its logic as plain functions, then its API through
gradio_client against a launched app. A tiny random model stands in for the bundled checkpoint: nothing here depends on
image quality, and everything runs offline on one thread."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from diffusion import DiffusionPipeline, UNet, UNetConfig
from diffusion.machine import cpu_cores, flops_per_pixel
from diffusion.samplers import SAMPLERS, SamplerOptions, SamplerSpec
from diffusion.samplers.ddim import ddim
from diffusion.trajectory import frame_steps
from studio import media, models, options, runs, settings, ui
from studio.handlers import Studio
from studio.settings import Settings

TINY = UNetConfig(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(16, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=None,
)


def write_tiny_model(path: Path, seed: int = 0) -> Path:
    """A 1-channel 8x8 diffusers-layout model with random weights (fast on one CPU thread)."""
    torch.manual_seed(seed)
    DiffusionPipeline(UNet(TINY), {}).save_pretrained(path)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def make_studio(model: str, **changes) -> Studio:
    return Studio(Settings(**{"default_model": model, "compile": False, **changes}))


@pytest.fixture(scope="module")
def studio(tiny_model) -> Studio:
    return make_studio(tiny_model)


@pytest.fixture(scope="module")
def pipe(studio):
    return studio.store.get(studio.default_model)


def run_all(gen):
    return list(gen)


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


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


# ------------------------------------------------------------------------------------------- models


def test_model_store_errors_keep_the_current_model(studio, tiny_model):
    current = studio.store.get(tiny_model)
    with pytest.raises(gr.Error, match="is not available: this server cannot reach the Hub now"):
        studio.store.get("nobody/no-such-ddpm")
    with pytest.raises(gr.Error, match="not a Hub repo id"):
        studio.store.get("not a repo id!")
    with pytest.raises(gr.Error, match="is a local path"):  # other local folders: only with allow_local
        studio.store.get(str(Path(tiny_model).parent))
    for name in ("a" * 300, "owner/" + "b" * 5000, "x" * 255 + "/y", "a\x00b/c"):  # too long for the file system, NUL
        with pytest.raises(gr.Error, match="model name|not a Hub repo id|not a usable"):
            studio.store.get(name)
    assert studio.store.get(tiny_model) is current and studio.store.peek(tiny_model) is current


def test_a_slow_load_does_not_block_loaded_models(studio, tiny_model, monkeypatch):
    """Loading runs outside the store's lock: while one model downloads, requests for loaded ones go on."""
    import threading

    studio.store.get(tiny_model)
    started = threading.Event()

    def slow(key):
        started.set()
        time.sleep(3)
        raise gr.Error("simulated slow failure")

    monkeypatch.setattr(studio.store, "_load", slow)
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(gr.Error, studio.store.get, "someone/slow")))
    t.start()
    assert started.wait(10)
    t0 = time.perf_counter()
    assert studio.store.get(tiny_model) is not None
    assert time.perf_counter() - t0 < 1.0
    t.join()


def test_model_store_is_a_bounded_lru(tmp_path):
    paths = [str(write_tiny_model(tmp_path / f"m{i}", seed=i)) for i in range(3)]
    store = models.ModelStore(Settings(default_model=paths[0], max_models=2, allow_local=True, compile=False))
    first = store.get(paths[0])
    store.get(paths[1])
    assert store.get(paths[0]) is first  # a hit refreshes it
    store.get(paths[2])
    assert len(store.loaded()) == 2 and store.peek(paths[1]) is None and store.peek(paths[0]) is first


def test_a_bad_local_checkpoint_gives_a_clear_error(tmp_path):
    (tmp_path / "broken").mkdir()
    store = models.ModelStore(Settings(default_model=str(tmp_path / "broken")))
    with pytest.raises(gr.Error, match="No config.json"):
        store.get(None)


# ------------------------------------------------------------------------------------------- runs


def test_frame_steps_keep_first_and_last():
    assert frame_steps(5, 100) == {0, 1, 2, 3, 4}
    picked = frame_steps(1000, 50)
    assert len(picked) == 50 and {0, 999} <= picked
    assert frame_steps(10, 0) == set()


def test_sample_streams_previews_then_results(tiny_model):
    studio = make_studio(tiny_model, preview_every_s=0.0)
    outs = run_all(studio.sample(studio.default_model, "ddim", 5, 3, steps=6, eta=0.0, variance_type="fixed_large"))
    assert len(outs) == 7  # "starting", five previews (one per step but the last), then the results
    assert outs[0][2] == "DDIM: step 0 / 6 · starting"
    assert outs[3][2] == "DDIM: step 3 / 6 · preview: predicted x0 at step 3"
    preview = png(outs[1][0])
    assert preview.shape[-1] == 3 and preview.shape[1] >= settings.PREVIEW_PX
    shown, grid_file, info, traj = outs[-1]
    assert png(shown).shape[1] >= settings.DISPLAY_PX  # one view of the samples, upscaled for the page
    grid = Image.open(grid_file)
    # the download: a 2x2 grid of the 8 px images at 14x (112 px), each pixel a 14 x 14 block, and said so
    assert grid.format == "PNG" and grid.size == (2 * 114 + 2, 2 * 114 + 2) and grid_file.endswith("_x14.png")
    assert "download: 14× nearest-neighbour, 230×230 px" in info
    assert "3 images" in info and "6 steps" in info and "6 model evaluations" in info
    assert len(traj) == 7 and traj.timesteps[-1] == -1 and traj.visited == traj.timesteps[:-1]


def test_runs_yield_a_cancel_point_at_every_progress_tick_between_previews(tiny_model, monkeypatch):
    """Stop takes effect at a yield, so Sample and Compare yield at each progress tick, not only at the previews
    (pictures unchanged, the result line's step count updated): with ticks at every step and one preview, every
    step but the last yields."""
    from studio import handlers

    def step_only(o, line: int) -> bool:  # every output skipped but the result line
        return all(isinstance(v, type(gr.skip())) for i, v in enumerate(o) if i != line)

    monkeypatch.setattr(handlers, "PROGRESS_EVERY_S", 0.0)
    studio = make_studio(tiny_model, preview_every_s=1e9)
    outs = run_all(studio.sample(studio.default_model, "ddpm", 0, 1, steps=8))
    assert len(outs) == 9 and outs[1][0] is not None  # starting, the first step's preview, 6 cancel points, result
    assert all(step_only(o, 2) for o in outs[2:8])
    assert [o[2].split(" · ")[0] for o in outs[2:8]] == [f"DDPM: step {i} / 8" for i in range(2, 8)]
    outs = run_all(studio.compare(studio.default_model, 0, 1, a_sampler="ddpm", a_steps=5, b_sampler="ddim", b_steps=4))
    points = [o for o in outs[1:] if step_only(o, 4)]
    assert len(points) == (5 - 2) + (4 - 1)  # panel A: all but its preview and last step; B: all but its last


def test_studio_uses_a_compiled_package_where_one_exists(tiny_model, tmp_path, monkeypatch):
    """Loading a model picks up its ahead-of-time package (never compiles during a request); the info line
    says a run was compiled; with compile off, or without a package, it runs eagerly."""
    from diffusion import compiled

    if compiled.compiler_problem():
        pytest.skip("no C++ compiler for Inductor")
    monkeypatch.setenv("DIFFUSION_COMPILED_CACHE", str(tmp_path))
    eager = make_studio(tiny_model)
    assert eager.store.get(None).compiled is None
    plain = make_studio(tiny_model, compile=True)
    assert plain.store.get(None).compiled is None  # no package built: eager, nothing compiled
    compiled.build(plain.store.get(None).unet, verbose=False)
    studio = make_studio(tiny_model, compile=True)
    pipe = studio.store.get(None)
    assert pipe.compiled is not None and "compiled ahead of time" in studio.store.describe(pipe, "tiny")
    fast = run_all(studio.sample(studio.default_model, "ddim", 0, 2, steps=3, eta=0.0))[-1]
    slow = run_all(eager.sample(eager.default_model, "ddim", 0, 2, steps=3, eta=0.0))[-1]
    assert "· compiled ·" in fast[2] and "compiled" not in slow[2]
    assert np.abs(png(fast[0]).astype(int) - png(slow[0]).astype(int)).max() <= 1  # the same pictures


def test_same_seed_same_images(studio):
    kw = dict(steps=4, eta=0.0)
    a = png(run_all(studio.sample(studio.default_model, "ddim", 11, 2, **kw))[-1][0])
    b = png(run_all(studio.sample(studio.default_model, "ddim", 11, 2, **kw))[-1][0])
    c = png(run_all(studio.sample(studio.default_model, "ddim", 12, 2, **kw))[-1][0])
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_sample_refuses_bad_requests_before_working(studio):
    for kwargs, message in [
        (dict(num_images=0), "number of images"),
        (dict(num_images=65), "number of images"),
        (dict(seed=-5), "seed"),
        (dict(steps=0), "positive integer"),
        (dict(steps=1001), "between 1 and 1000"),
        (dict(model="someone/missing"), "is not available: this server cannot reach the Hub now"),
        (dict(sampler="nope"), "Unknown sampler"),
    ]:
        args = dict(model=studio.default_model, sampler="ddim", seed=0, num_images=1, steps=5) | kwargs
        with pytest.raises(gr.Error, match=message):
            run_all(studio.sample(**args))


def test_trajectory_frames_readout_and_files(studio, pipe, tmp_path):
    opts = options.make_options(pipe, "ddpm", {"num_inference_steps": 30})
    run = runs.Run(pipe, "ddpm", opts, 2, 0)
    from diffusion.trajectory import Trajectory

    steps = []
    traj = Trajectory(30, pipe.schedule, max_frames=10, images=2, meta={"sampler": "ddpm", "model": "tiny"})
    for step in run:
        traj.observe(step)
        steps.append(step)
    traj.finish(steps[-1].x_prev)
    assert len(steps) == 30 and run.evaluations == 30 and run.seconds > 0
    assert len(traj) == 11 and traj.steps[0] == 0 and traj.steps[-2] == 29 and traj.steps[-1] == 30
    assert traj.timesteps[0] == steps[0].t == 957 and traj.timesteps[-1] == -1  # leading spacing: 29 * (1000 // 30)
    assert traj.abar[0] == pytest.approx(pipe.schedule.alphas_cumprod[957].item())
    assert traj.sigma(0) == pytest.approx((1 - traj.abar[0]) ** 0.5) and traj.sigma(len(traj) - 1) == 0
    assert torch.equal(traj.x_t[0], steps[0].x_t.half()) and torch.equal(
        traj.x0[3], steps[traj.steps[3]].pred_x0.half()
    )
    assert "t = 957" in media.readout(traj, 0) and "ᾱ_t" in media.readout(traj, 0) and "σ_t" in media.readout(traj, 0)
    assert "sample" in media.readout(traj, len(traj) - 1)
    xt, x0 = media.frame_pictures(traj, 0)
    assert xt.shape == x0.shape and xt.shape[1] >= settings.FRAME_PX
    files = media.trajectory_files(traj, tmp_path, "tiny_ddpm")
    import imageio.v3 as iio

    gif = iio.imread(files["gif"], index=None)
    assert gif.shape[0] >= len(traj)  # every frame, then the sample held
    assert files["mp4"].stat().st_size > 0
    with zipfile.ZipFile(files["zip"]) as z:
        assert len(z.namelist()) == len(traj) and z.namelist()[-1].endswith("sample.png")
    data = np.load(files["npz"])
    assert data["x_t"].shape == (11, 2, 1, 8, 8) and list(data["timesteps"]) == traj.timesteps
    assert json.loads(str(data["meta"]))["sampler"] == "ddpm"


def test_trajectory_memory_is_bounded(pipe):
    from diffusion.trajectory import Trajectory

    budget = 2 * 2 * 16 * 64 * 10  # room for 10 frames of 16 images
    assert Trajectory.frames_per_budget(pipe.image_shape, 16, budget, 100) == 10
    assert Trajectory.frames_per_budget(pipe.image_shape, 1, budget, 100) == 100


def test_show_trajectory_and_frames(studio, pipe):
    traj = run_all(studio.sample(studio.default_model, "ddim", 1, 2, steps=5))[-1][-1]
    slider, xt, x0, readout, fig, gif, mp4, files = studio.show_trajectory(traj)
    assert slider["maximum"] == 5 and slider["value"] == 5 and "sample" in readout
    assert gif.endswith(".gif") and len(files) == 4 and len(fig.axes) == 2
    xt2, _, readout2 = studio.show_frame(2, traj)
    assert "Frame 2 / 5" in readout2 and png(xt2).shape == png(xt).shape
    assert studio.show_frame(2, traj)[0] == xt2  # written once per frame
    assert studio.show_frame(99, traj)[2].startswith("**Frame 5 / 5")
    # play: starts from 0 at the end, advances, stops at the sample
    start, timer, _, playing = studio.toggle_play(5, False, traj)
    assert start == 0 and timer.active and playing
    nxt, *_ = studio.advance(3, True, traj)
    assert nxt == 4
    last, timer, _, playing = studio.advance(4, True, traj)
    assert last == 5 and timer.active is False and playing is False
    assert studio.show_trajectory(None)[3].startswith("Run **Generate**")


# ------------------------------------------------------------------------------------------- compare


def test_compare_metrics_and_difference():
    a = {"sampler": "ddpm", "steps": 1000, "evaluations": 1000, "seconds": 10.0, "ms_per_step": 10.0}
    b = {"sampler": "ddim", "steps": 50, "evaluations": 50, "seconds": 0.5, "ms_per_step": 10.0}
    x = torch.rand(2, 1, 8, 8)
    heat, same = runs.difference(x, x.clone())
    assert same["max_abs_difference"] == 0 and same["psnr_db"] == float("inf") and heat.shape == (2, 3, 8, 8)
    heat, diff = runs.difference(x, (x + 0.1).clamp(0, 1))
    assert 0 < diff["mean_abs_difference"] <= 0.1 + 1e-6 and diff["psnr_db"] > 19
    m = runs.compare_metrics(a, b, diff, "cpu (1 threads)")
    assert m["faster"] == "b" and m["speedup"] == 20.0 and m["evaluation_ratio"] == 20.0
    md = runs.metrics_markdown(m)
    assert "Speed-up: 20.0×" in md and "| Model evaluations | 1000 | 50 |" in md
    with pytest.raises(ValueError):
        runs.difference(x, torch.rand(1, 1, 8, 8))


def test_compare_runs_both_panels_from_the_same_noise(tiny_model):
    studio = make_studio(tiny_model, preview_every_s=1e9)  # only the first preview
    outs = run_all(
        studio.compare(
            studio.default_model,
            4,
            2,
            a_sampler="ddpm",
            a_steps=20,
            a_variance_type="fixed_small",
            b_sampler="ddim",
            b_steps=5,
            b_eta=0.0,
        )
    )
    img_a, img_b, (sa, sb), heat, md, metrics = outs[-1]
    assert png(img_a).shape == png(img_b).shape == png(heat).shape and (sa, sb) == (img_a, img_b)
    assert (
        metrics["a"]["steps"] == 20
        and metrics["b"]["evaluations"] == 5
        and metrics["a"]["options"]["variance_type"] == "fixed_small"
    )
    assert "Speed-up" in md
    # DDIM with eta 0 and 5 steps from the same seed reproduces the same panel as a plain sample
    alone = run_all(studio.sample(studio.default_model, "ddim", 4, 2, steps=5, eta=0.0))[-1][0]
    assert np.array_equal(png(alone), png(img_b))
    studio = make_studio(tiny_model, max_work=100_000)
    with pytest.raises(gr.Error, match="budget"):
        run_all(
            studio.compare(studio.default_model, 0, 64, a_sampler="ddpm", a_steps=1000, b_sampler="ddpm", b_steps=1000)
        )


# ------------------------------------------------------------------------------------------- schedule plot


def test_schedule_plot_data(pipe):
    visited = options.planned_timesteps(pipe, "ddim", options.make_options(pipe, "ddim", {"num_inference_steps": 10}))
    assert visited == list(range(900, -1, -100))
    d = media.schedule_plot_data(pipe.schedule, visited + [5000])
    assert len(d["t"]) == len(d["abar"]) == 1000 and list(d["visited"]) == sorted(visited)
    assert np.allclose(d["visited_abar"], pipe.schedule.alphas_cumprod.numpy()[sorted(visited)])
    assert np.allclose(d["log_snr"], pipe.schedule.log_snr().numpy()) and np.all(np.diff(d["log_snr"]) < 0)
    fig = media.schedule_figure(d, "t")
    assert len(fig.axes) == 2
    assert make_studio("nowhere").schedule_preview("nowhere", "ddim", steps=10) == gr.skip()  # no model loaded: no plot


# ------------------------------------------------------------------------------------------- memory


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_memory_does_not_grow_across_requests(studio):
    def once():
        outs = run_all(studio.sample(studio.default_model, "ddim", 0, 4, steps=5))
        studio.show_frame(2, outs[-1][-1])
        run_all(studio.compare(studio.default_model, 0, 2, a_sampler="ddpm", a_steps=5, b_sampler="ddim", b_steps=2))

    for _ in range(3):
        once()
    before = rss_mb()
    for _ in range(10):
        once()
    assert rss_mb() - before < 20


# ------------------------------------------------------------------------------------------- gradio_client


@pytest.fixture(scope="module")
def served(tiny_model):
    """The app launched in this process; yields (client, url)."""
    from gradio_client import Client

    demo = ui.build_app(make_studio(tiny_model))
    _, url, _ = ui.launch(demo, prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    client = Client(url, verbose=False)
    yield client, url, demo
    client.close()
    demo.close()


def test_every_event_handler_that_uses_torch_runs_on_the_compute_thread(studio):
    """A handler doing torch work on Gradio's worker threads makes the studio's sampling slower
    (studio/compute.py says why): every Studio and Explore method wired to an event runs on the compute
    thread, but for those that touch no tensors."""
    no_torch = {"fetch", "toggle_play", "advance"}  # fetch: files on the caller, the model built there
    demo = ui.build_app(studio)
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    methods = [f.fn for f in fns if type(getattr(f.fn, "__self__", None)).__name__ in ("Studio", "Explore")]
    names = {m.__name__ for m in methods}
    assert {"sample", "compare", "show_frame", "interpolate", "reconstruct", "consistency"} <= names
    off = [m.__name__ for m in methods if m.__name__ not in no_torch and not getattr(m, "runs_on_compute_thread", 0)]
    assert off == []


def test_client_sees_two_named_endpoints(served):
    client, _, _ = served
    info = client.view_api(return_format="dict", print_info=False)
    assert set(info["named_endpoints"]) == {"/sample", "/compare", "/interpolate", "/reconstruct", "/consistency"}
    names = [p["parameter_name"] for p in info["named_endpoints"]["/sample"]["parameters"]]
    assert names[:4] == ["model", "sampler", "seed", "num_images"] and {
        "steps",
        "eta",
        "variance_type",
        "timestep_spacing",
    } <= set(names)
    a_names = [p["parameter_name"] for p in info["named_endpoints"]["/compare"]["parameters"]]
    assert {"a_sampler", "a_steps", "b_sampler", "b_eta"} <= set(a_names)


def test_client_sample(served, tiny_model):
    client, _, _ = served
    shown, grid_file, info = client.predict(sampler="ddim", steps=5, eta=0.0, seed=3, num_images=4, api_name="/sample")
    assert Image.open(shown).size[0] >= settings.DISPLAY_PX
    assert Image.open(grid_file).size == (230, 230) and "4 images" in info
    # streaming: a job holds every yield (previews, then the result)
    job = client.submit(sampler="ddpm", steps=40, seed=3, num_images=2, api_name="/sample")
    outputs = job.outputs() if job.result() else []
    assert len(outputs) >= 2 and "40 steps" in outputs[-1][2]


def test_client_compare(served):
    client, _, _ = served
    a, b, pair, diff, md, metrics = client.predict(
        seed=1, num_images=2, a_sampler="ddpm", a_steps=30, b_sampler="ddim", b_steps=5, b_eta=0.0, api_name="/compare"
    )
    assert Image.open(a).size == Image.open(b).size == Image.open(diff).size and len(pair) == 2
    assert metrics["a"]["evaluations"] == 30 and metrics["b"]["evaluations"] == 5 and metrics["speedup"] > 0
    assert "Speed-up" in md


def test_client_errors_are_clear(served, monkeypatch):
    from gradio_client.exceptions import AppError

    client, _, _ = served
    with pytest.raises(AppError, match="nobody/nothing is not available: this server cannot reach the Hub"):
        client.predict(model="nobody/nothing", steps=5, num_images=1, api_name="/sample")
    client, _, demo = served
    store = demo.studio.store
    monkeypatch.setattr(store, "settings", store.settings.replace(max_work=100_000))  # the server runs in this process
    with pytest.raises(AppError, match="above the CPU budget of 100,000"):
        client.predict(a_steps=1000, b_steps=50, num_images=4, api_name="/compare")
    monkeypatch.undo()
    with pytest.raises(AppError, match="seed"):
        client.predict(seed=-1, steps=5, num_images=1, api_name="/sample")
    with pytest.raises(AppError):
        client.predict(steps=0, num_images=1, api_name="/sample")
    # the server still works afterwards
    for field in ("steps", "seed", "num_images"):  # 2.5 is refused, not rounded by the widgets
        with pytest.raises(AppError, match="whole number"):
            client.predict(**{"steps": 2, "num_images": 1, field: 2.5}, api_name="/sample")
    with pytest.raises(AppError, match="model name"):
        client.predict(model="m" * 400, steps=2, num_images=1, api_name="/sample")
    assert "**1 image**" in client.predict(steps=2, num_images=1, api_name="/sample")[2]


def test_client_cancel_stops_a_long_run(served, monkeypatch, capsys):
    """Stop (a cancel) ends the generator on the server: the sampler takes no more steps, and the
    server's log says where it stopped."""
    client, _, _ = served
    studio = served[2].studio
    monkeypatch.setattr(studio, "settings", studio.settings.replace(preview_every_s=0.05))
    taken = [0]
    plain_iter = runs.Run.__iter__

    def counting(run):
        for step in plain_iter(run):
            taken[0] += 1
            yield step

    monkeypatch.setattr(runs.Run, "__iter__", counting)
    job = client.submit(sampler="ddpm", steps=1000, num_images=64, api_name="/sample")
    deadline = time.time() + 60
    while len(job.outputs()) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(job.outputs()) >= 2, "no previews arrived"
    job.cancel()
    deadline, last = time.time() + 30, -1
    while taken[0] != last and time.time() < deadline:  # wait for the step in flight
        last = taken[0]
        time.sleep(1.0)
    assert taken[0] == last < 1000  # stopped early, and stays stopped
    assert f"[studio] ddpm stopped at step {last} of 1000" in capsys.readouterr().out
    assert "2 steps" in client.predict(steps=2, num_images=1, api_name="/sample")[2]  # the queue is free again


def test_hub_models_download_on_demand_and_a_failure_keeps_the_current_model(tiny_model, tmp_path):
    """``python app.py`` against a loopback Hub (HF_ENDPOINT): a repo id downloads when first asked
    for, an unknown one gives a clear error, and the default model keeps serving."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from hub_server import HubServer

    root = Path(__file__).resolve().parents[1]
    with HubServer() as hub:
        hub.add_folder("someone/tiny-ddpm", Path(tiny_model))
        with socket.socket() as sock:  # a free port
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf"),
            "CPU_CORES": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "COMPILE": "0",
        }
        log = open(tmp_path / "app.log", "w")
        proc = subprocess.Popen(
            [sys.executable, str(root / "app.py"), "--model", tiny_model, "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.time() + 180
            while True:
                assert proc.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
                try:
                    urllib.request.urlopen(url + "gradio_api/info", timeout=2)
                    break
                except OSError:
                    assert time.time() < deadline, "the app did not start"
                    time.sleep(0.3)
            client = Client(url, verbose=False)
            info = client.predict(model="someone/tiny-ddpm", steps=3, num_images=2, api_name="/sample")[2]
            assert "2 images" in info and "3 steps" in info
            fetched = {path.split("/resolve/main/")[-1] for method, path in hub.requests if method == "GET"}
            assert {"unet/config.json", "unet/diffusion_pytorch_model.safetensors"} <= fetched
            with pytest.raises(AppError, match="No Hub repo named 'nobody/missing'"):
                client.predict(model="nobody/missing", steps=3, num_images=1, api_name="/sample")
            assert "1 image" in client.predict(steps=2, num_images=1, api_name="/sample")[2]
            client.close()
        finally:
            proc.terminate()
            proc.wait(20)
            log.close()


# ------------------------------------------------------------------------------------------- temp folder


def count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def test_temp_folder_stays_bounded_over_many_requests(tiny_model):
    """Every picture and file a request makes lives in its own folder; only the newest ``keep_outputs``
    folders stay (previews, result grids, Denoising files and frames alike)."""
    studio = make_studio(tiny_model, keep_outputs=4, preview_every_s=0.0)
    root = studio.outputs.root
    sizes = []
    for i in range(50):
        traj = run_all(studio.sample(studio.default_model, "ddim", i, 2, steps=3))[-1][-1]
        if i % 10 == 0:
            studio.show_trajectory(traj)
            studio.show_frame(1, traj)
        sizes.append(count_files(root))
    folders = [p for p in root.iterdir() if p.is_dir()]
    assert len(folders) <= 4 and set(folders) <= set(studio.outputs._made)
    assert max(sizes[10:]) <= max(sizes[:10]) + 20  # flat after the first few requests, not growing with them
    studio.outputs.clear()
    assert not root.exists()


def test_served_app_keeps_gradio_cache_bounded(served, monkeypatch):
    from gradio.utils import get_upload_folder
    from gradio_client import Client

    _, url, demo = served
    # A client that downloads nothing: gradio_client's downloads land under the same temp root by default,
    # and this test counts what the server keeps there.
    client = Client(url, verbose=False, download_files=False)
    monkeypatch.setattr(demo.studio.outputs, "keep", 3)
    root, ours = Path(get_upload_folder()), demo.studio.outputs.root
    client.predict(steps=2, num_images=1, api_name="/sample")
    before = count_files(root) - count_files(root / "studio")
    for seed in range(12):
        client.predict(steps=2, num_images=2, seed=seed, api_name="/sample")
    assert len([p for p in ours.iterdir() if p.is_dir()]) <= 3
    after = count_files(root) - count_files(root / "studio")
    new = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "studio" not in p.parts)
    assert after <= before + 2, new[-20:]  # results are served in place, not copied
    client.close()


# ------------------------------------------------------------------------------------------- explore


@pytest.fixture(scope="module")
def explore(studio):
    from studio.explore import Explore

    return Explore(studio)


def a_picture(tmp_path: Path, name: str = "img.png", size: int = 40, mode: str = "RGB") -> str:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size, size, 3 if mode == "RGB" else 1), dtype=np.uint8)
    path = tmp_path / name
    Image.fromarray(arr.squeeze(-1) if mode == "L" else arr).save(path)
    return str(path)


def test_explore_interpolates_between_seeds_and_between_images(explore, tmp_path):
    outs = run_all(explore.interpolate(explore.studio.default_model, 3, 4, 5, 4))
    strip, gif, info = outs[-1]
    assert png(strip).shape[1] >= settings.DISPLAY_PX and "5 frames" in info and "seeds 3 and 4" in info
    import imageio.v3 as iio

    assert iio.imread(gif, index=None).shape[0] == 5 + 3  # there and back
    # the ends are the seeds' own DDIM samples
    alone = [
        png(run_all(explore.studio.sample(explore.studio.default_model, "ddim", s, 1, steps=4, eta=0.0))[-1][0])
        for s in (3, 4)
    ]
    tiles = png(strip)
    assert tiles.shape[0] > 0 and not np.array_equal(alone[0], alone[1])
    img = a_picture(tmp_path)
    outs = run_all(
        explore.interpolate(
            explore.studio.default_model, 0, 0, 3, 3, image_a=img, image_b=a_picture(tmp_path, "b.png", mode="L")
        )
    )
    assert "images' DDIM latents" in outs[-1][2]
    with pytest.raises(gr.Error, match="Frames"):
        run_all(explore.interpolate(explore.studio.default_model, 0, 1, 1, 4))
    with pytest.raises(gr.Error, match="image B"):
        run_all(explore.interpolate(explore.studio.default_model, 0, 1, 3, 4, image_a=img))


def test_explore_reconstructs_an_image_and_refuses_bad_uploads(explore, tmp_path):
    *_, (inp, latent, recon, info) = run_all(explore.reconstruct(explore.studio.default_model, a_picture(tmp_path), 5))
    assert png(inp).shape == png(latent).shape == png(recon).shape and "per-dimension MSE" in info
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    for path, message in [
        (None, "Upload"),
        (str(not_image), r"The image \(notes.png\) cannot be used: not an image file \(PNG, JPEG"),
        (str(tmp_path / "gone.png"), r"\(gone.png\) cannot be used: the uploaded file is gone .*; upload it again"),
    ]:
        with pytest.raises(gr.Error, match=message):
            run_all(explore.reconstruct(explore.studio.default_model, path, 5))
    big = tmp_path / "big.png"
    Image.new("L", (5000, 5000)).save(big)
    with pytest.raises(gr.Error, match="at most 4096"):
        run_all(explore.reconstruct(explore.studio.default_model, str(big), 5))
    wide = tmp_path / "wide.png"
    Image.new("RGB", (56, 28), (200, 30, 30)).save(wide)
    *_, (_, _, _, info) = run_all(explore.reconstruct(explore.studio.default_model, str(wide), 2))
    said = "colour made grey (ITU-R 601 luma), centre-cropped from 56×28 to 28×28, resized from 28×28 to 8×8"
    assert info.endswith(f" · the input: {said}"), info
    with pytest.raises(gr.Error, match="whole number"):
        run_all(explore.reconstruct(explore.studio.default_model, a_picture(tmp_path), 2.5))
    fig, table = run_all(explore.error_curve(explore.studio.default_model, a_picture(tmp_path)))[-1]
    assert len(fig.axes) == 1 and "| steps | MSE per dimension |" in table and "| 100 |" in table


def test_explore_consistency_one_row_per_step_count(explore):
    *_, (grid, info) = run_all(explore.consistency(explore.studio.default_model, 2, 3, [10, 5]))
    assert "5, 10 steps" in info and Image.open(grid).size[1] > 0
    with pytest.raises(gr.Error, match="at least one"):
        run_all(explore.consistency(explore.studio.default_model, 2, 3, []))
    studio = make_studio(explore.studio.default_model, max_work=1000)
    from studio.explore import Explore

    with pytest.raises(gr.Error, match="budget"):
        run_all(Explore(studio).consistency(studio.default_model, 0, 8, [1000]))


def test_client_explore_endpoints(served, tmp_path):
    from gradio_client import handle_file

    client, _, _ = served
    strip, gif, info = client.predict(seed_a=1, seed_b=2, frames=4, steps=3, api_name="/interpolate")
    assert Image.open(strip).size[0] >= settings.DISPLAY_PX and "4 frames" in info
    inp, latent, recon, info = client.predict(image=handle_file(a_picture(tmp_path)), steps=3, api_name="/reconstruct")
    assert "MSE" in info and Image.open(recon).size == Image.open(inp).size
    grid, info = client.predict(seed=0, num_images=2, counts=[10, 20], api_name="/consistency")
    assert "10, 20 steps" in info
    (tmp_path / "notes.png").write_text("not an image")  # through the API too: the reason, not a generic error
    with pytest.raises(Exception, match=r"The image \(notes.png\) cannot be used: not an image file"):
        client.predict(image=handle_file(str(tmp_path / "notes.png")), steps=3, api_name="/reconstruct")
