"""The studio (app.py): its logic as plain functions, then its API through gradio_client against a
launched app. A tiny random model stands in for the bundled checkpoint: nothing here depends on
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # app.py sits at the repository root

import app  # noqa: E402
from diffusion import DiffusionPipeline, UNet, UNetConfig
from diffusion.samplers import SAMPLERS, SamplerOptions, SamplerSpec
from diffusion.samplers.ddim import ddim

TINY = UNetConfig(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 16),
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                  layers_per_block=1, norm_num_groups=8, attention_head_dim=None)


def write_tiny_model(path: Path, seed: int = 0) -> Path:
    """A 1-channel 8x8 diffusers-layout model with random weights (fast on one CPU thread)."""
    torch.manual_seed(seed)
    DiffusionPipeline(UNet(TINY), {}).save_pretrained(path)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.fixture(scope="module")
def studio(tiny_model) -> app.Studio:
    return app.Studio(tiny_model, allow_local=False)


@pytest.fixture(scope="module")
def pipe(studio):
    return studio.store.get(studio.default_model)


def run_all(gen):
    return list(gen)


# ------------------------------------------------------------------------------------------- options

def test_option_fields_come_from_the_registry():
    fields = app.all_option_fields()
    assert list(fields)[:4] == ["num_inference_steps", "eta", "variance_type", "timestep_spacing"]
    assert "prediction_type" not in fields  # the model's own, never a control
    assert "variance_type" in app.sampler_fields("ddpm") and "eta" not in app.sampler_fields("ddpm")
    assert "eta" in app.sampler_fields("ddim") and "variance_type" not in app.sampler_fields("ddim")


def test_a_newly_registered_sampler_gets_controls_and_options(monkeypatch, pipe):
    @dataclasses.dataclass(frozen=True)
    class ChurnOptions(SamplerOptions):
        num_inference_steps: int = 7
        churn: float = 0.25
        order: int = 2

    monkeypatch.setitem(SAMPLERS, "churny", SamplerSpec("churny", ddim, ChurnOptions, "a test sampler"))
    assert {"churn", "order"} <= set(app.all_option_fields())
    opts = app.make_options(pipe, "churny", {"churn": 0.5, "eta": 0.3, "variance_type": "fixed_large"})
    assert opts.churn == 0.5 and opts.order == 2 and opts.num_inference_steps == 7  # other samplers' values ignored
    with gr.Blocks():
        oc = app.OptionControls(pipe, "churny")
    assert isinstance(oc.controls["churn"], gr.Number) and oc.controls["churn"].visible
    assert oc.controls["eta"].visible is False and oc.controls["num_inference_steps"].value == 7
    ups = oc.updates(pipe, "ddim")
    assert ups[1 + list(oc.controls).index("churn")]["visible"] is False


def test_fewer_evaluation_samplers_get_controls_and_run(studio, pipe):
    """DPM-Solver++, PNDM, Euler and Heun: Literal options as dropdowns (ints too), bools as checkboxes,
    spacing choices per sampler; runs report the model evaluations, not the steps."""
    with gr.Blocks():
        oc = app.OptionControls(pipe, "dpm-solver++")
    order = oc.controls["solver_order"]
    assert isinstance(order, gr.Dropdown) and order.value == 2 and order.visible and order.preprocess(3) == 3
    assert isinstance(oc.controls["skip_prk_steps"], gr.Checkbox) and oc.controls["skip_prk_steps"].visible is False
    assert [v for _, v in oc.controls["timestep_spacing"].choices] == ["leading", "linspace", "trailing"]
    assert "interpolation_type" not in oc.controls and "sigma_min" not in oc.controls  # one allowed value; the checkpoint's
    algorithm = oc.controls["algorithm_type"]
    assert isinstance(algorithm, gr.Dropdown) and [v for _, v in algorithm.choices] == ["dpmsolver++", "sde-dpmsolver++"]
    assert isinstance(oc.controls["use_karras_sigmas"], gr.Checkbox) and oc.controls["use_karras_sigmas"].visible
    ups = dict(zip(oc.controls, oc.updates(pipe, "pndm")[1:]))
    assert ups["skip_prk_steps"]["visible"] and ups["skip_prk_steps"]["value"] is False and not ups["solver_order"]["visible"]
    assert oc.updates(pipe, "ddim")[1 + list(oc.controls).index("timestep_spacing")]["choices"][-1] == "quad"
    assert app.make_options(pipe, "dpm-solver++", {"solver_order": 3, "eta": 0.5}).solver_order == 3
    ups = dict(zip(oc.controls, oc.updates(pipe, "euler-ancestral")[1:]))
    assert not ups["use_karras_sigmas"]["visible"] and not ups["algorithm_type"]["visible"] and ups["timestep_spacing"]["visible"]
    with pytest.raises(gr.Error, match="Only one of"):
        app.make_options(pipe, "heun", {"use_karras_sigmas": True, "use_beta_sigmas": True})
    for sampler, values, message in [("euler", {"timestep_spacing": "quad"}, "is not one of 'leading', 'linspace', 'trailing'"),
                                     ("pndm", {"num_inference_steps": 3}, "warm-up"),
                                     ("dpm-solver++", {"num_inference_steps": 1000, "timestep_spacing": "leading"}, "repeats timesteps")]:
        with pytest.raises(gr.Error, match=message):
            app.make_options(pipe, sampler, values)
    assert app.planned_timesteps(pipe, "heun", app.make_options(pipe, "heun", {"num_inference_steps": 3})) == [666, 333, 333, 0, 0]
    karras = app.make_options(pipe, "dpm-solver++", {"num_inference_steps": 5, "use_karras_sigmas": True})
    assert app.planned_timesteps(pipe, "dpm-solver++", karras) == [999, 843, 593, 142, 0]  # diffusers' for Karras sigmas
    for sampler, extra, evaluations in [("dpm-solver++", {}, 5), ("euler", {}, 5), ("heun", {}, 9), ("pndm", {}, 14),
                                        ("pndm", {"skip_prk_steps": True}, 6), ("euler-ancestral", {}, 5),
                                        ("dpm-solver++", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, 5),
                                        ("heun", {"use_exponential_sigmas": True}, 9)]:
        *_, (image, gallery, grid, info, traj) = run_all(studio.sample(studio.default_model, sampler, 0, 2, steps=5, **extra))
        assert f"5 steps · {evaluations} model evaluations" in info and len(gallery) == 2
        assert len(traj) == 6 and traj.timesteps[-1] == -1 and all(isinstance(t, int) for t in traj.timesteps)


def test_make_options_validates_with_clear_messages(pipe):
    opts = app.make_options(pipe, "ddim", {"num_inference_steps": 20, "eta": 0.5, "variance_type": "fixed_large"})
    assert (opts.num_inference_steps, opts.eta) == (20, 0.5)
    assert app.make_options(pipe, "ddpm", {"num_inference_steps": None}).num_inference_steps == 1000  # None: default
    for values, message in [({"num_inference_steps": 0}, "num_inference_steps must be a positive integer"),
                            ({"num_inference_steps": 1001}, "between 1 and 1000"),
                            ({"num_inference_steps": 2.5}, "whole number"),
                            ({"eta": 1.5}, "eta must be between 0"),
                            ({"timestep_spacing": "random"}, "is not one of"),
                            ({"steps_offset": -5}, r"steps_offset must be a non-negative integer \(every timestep must stay in 0..T-1\)"),
                            ({"clip_sample_range": float("nan")}, "clip_sample_range must be a finite number"),
                            ({"clip_sample": "maybe"}, "clip_sample must be true or false"),
                            ({"timestep_spacing": "quad", "num_inference_steps": 900}, "quad")]:
        with pytest.raises(gr.Error, match=message):
            app.make_options(pipe, "ddim", values)
    with pytest.raises(gr.Error, match="Unknown sampler 'euler-x'; choose one of"):
        app.make_options(pipe, "euler-x", {})


@pytest.mark.parametrize("seed", [-1, 1.5, None, "3", 2**63])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(gr.Error, match="seed"):
        app.check_seed(seed)


def test_work_budget_is_stated_and_enforced(pipe, monkeypatch):
    monkeypatch.setattr(app, "WORK_BUDGET", 64 * 1000 * 10)
    budget = app.work_budget(pipe, on_gpu=False)
    assert budget == 640_000  # the tiny model costs less than REFERENCE_FLOPS: the full budget
    assert app.check_work(pipe, 10, 1000, "tiny") == 640_000
    with pytest.raises(gr.Error, match=r"11 images × 8×8 pixels × 1000 steps = 704,000 pixel-steps.*budget of 640,000.*"
                                       r"at most 909 steps with 11 images or at most 10 images with 1000 steps"):
        app.check_work(pipe, 11, 1000, "tiny")
    assert "≤ **640,000**" in app.describe_model(pipe, "tiny")
    assert app.work_budget(pipe, on_gpu=True) == 640_000 * app.GPU_BUDGET_FACTOR


def test_work_counts_model_evaluations_not_steps(pipe):
    count = {s: app.evaluations(pipe, s, pipe.sampler_options(s, num_inference_steps=10)) for s in ("ddim", "heun", "pndm")}
    assert count == {"ddim": 10, "heun": 19, "pndm": 19}


def test_costlier_models_get_a_smaller_budget(pipe, monkeypatch):
    assert 0 < app.flops_per_pixel(pipe) < app.REFERENCE_FLOPS  # counted on the meta device
    monkeypatch.setattr(app, "flops_per_pixel", lambda p: 20 * app.REFERENCE_FLOPS)
    assert app.work_budget(pipe, on_gpu=False) == app.WORK_BUDGET // 20


def test_cpu_cores(monkeypatch):
    monkeypatch.setenv("CPU_CORES", "3")
    assert app.cpu_cores() == 3
    monkeypatch.setenv("CPU_CORES", "many")
    with pytest.raises(ValueError, match="CPU_CORES"):
        app.cpu_cores()
    monkeypatch.delenv("CPU_CORES")
    assert app.cpu_cores() >= 1


# ------------------------------------------------------------------------------------------- models

def test_model_store_errors_keep_the_current_model(studio, tiny_model):
    current = studio.store.get(tiny_model)
    with pytest.raises(gr.Error, match="offline mode is on"):
        studio.store.get("nobody/no-such-ddpm")
    with pytest.raises(gr.Error, match="not a Hub repo id"):
        studio.store.get("not a repo id!")
    with pytest.raises(gr.Error, match="is a local path"):  # other local folders: only with allow_local
        studio.store.get(str(Path(tiny_model).parent))
    assert studio.store.get(tiny_model) is current and studio.store.peek(tiny_model) is current


def test_model_store_is_a_bounded_lru(tmp_path):
    paths = [str(write_tiny_model(tmp_path / f"m{i}", seed=i)) for i in range(3)]
    store = app.ModelStore(paths[0], capacity=2, allow_local=True)
    first = store.get(paths[0])
    store.get(paths[1])
    assert store.get(paths[0]) is first  # a hit refreshes it
    store.get(paths[2])
    assert len(store.loaded()) == 2 and store.peek(paths[1]) is None and store.peek(paths[0]) is first


def test_a_bad_local_checkpoint_gives_a_clear_error(tmp_path):
    (tmp_path / "broken").mkdir()
    store = app.ModelStore(str(tmp_path / "broken"))
    with pytest.raises(gr.Error, match="No config.json"):
        store.get(None)


# ------------------------------------------------------------------------------------------- runs

def test_frame_steps_keep_first_and_last():
    assert app.frame_steps(5, 100) == {0, 1, 2, 3, 4}
    picked = app.frame_steps(1000, 50)
    assert len(picked) == 50 and {0, 999} <= picked
    assert app.frame_steps(10, 0) == set()


def test_sample_streams_previews_then_results(studio, monkeypatch):
    monkeypatch.setattr(app, "PREVIEW_EVERY_S", 0.0)
    outs = run_all(studio.sample(studio.default_model, "ddim", 5, 3, steps=6, eta=0.0, variance_type="fixed_large"))
    assert len(outs) == 6  # five previews (one per step but the last), then the results
    preview, *_ = outs[0]
    assert preview.dtype == np.uint8 and preview.shape[-1] == 3 and preview.shape[1] >= app.PREVIEW_PX
    grid, gallery, grid_file, info, traj = outs[-1]
    assert len(gallery) == 3 and gallery[0].shape[0] >= app.GALLERY_PX
    png = Image.open(grid_file)
    assert png.format == "PNG" and png.size == (2 * 10 + 2, 2 * 10 + 2)  # 2x2 grid of 8 px images, 2 px padding
    assert "3 images" in info and "6 steps" in info and "6 model evaluations" in info
    assert len(traj) == 7 and traj.timesteps[-1] == -1 and traj.visited == traj.timesteps[:-1]


def test_compiling_studio_queues_compiles_and_keeps_them_out_of_requests(tiny_model, monkeypatch):
    """``python app.py`` compiles CPU models in the background (diffusion.fast, tested there): loading
    queues the tabs' default batch sizes, a request queues its own, the compile waits while a request
    runs (previews included), and the info line says which path served it."""
    from diffusion import fast

    queued = []
    monkeypatch.setattr(fast.CompiledUNet, "_enqueue", lambda self, sig, x, t: queued.append(tuple(x.shape)))
    monkeypatch.setattr(app, "COMPILE_BATCHES", (16, 4))
    monkeypatch.setattr(app, "PREVIEW_EVERY_S", 0.0)
    studio = app.Studio(tiny_model, compile=True)
    pipe = studio.store.get(None)
    assert pipe.compiled is not None and pipe.compiled.background
    assert queued == [(16, 1, 8, 8), (4, 1, 8, 8)]
    serving = []
    for out in studio.sample(studio.default_model, "ddim", 0, 2, steps=3, eta=0.0):
        serving.append(pipe.compiled._busy_serving() and pipe.compiled._active == 1)
    assert all(serving[:-1]) and pipe.compiled._active == 0  # previews were yielded inside the run
    assert queued[-1] == (2, 1, 8, 8) and out[3].endswith("· eager (compiling)")
    monkeypatch.setattr(pipe.compiled, "ready", lambda shape=None: True)
    assert app.run_mode(pipe, 2) == " · compiled"
    assert app.run_mode(app.Studio(tiny_model).store.get(None), 2) == ""  # not compiling: nothing said
    queued.clear()
    monkeypatch.setattr(app, "work_budget", lambda pipe: 4 * 8 * 8 * 20)  # a costly model: 4 images x 20 evaluations
    app.Studio(tiny_model, compile=True).store.get(None)
    assert queued == [(4, 1, 8, 8)]  # only the image counts its budget allows are compiled ahead


def test_same_seed_same_images(studio):
    kw = dict(steps=4, eta=0.0)
    a = run_all(studio.sample(studio.default_model, "ddim", 11, 2, **kw))[-1][0]
    b = run_all(studio.sample(studio.default_model, "ddim", 11, 2, **kw))[-1][0]
    c = run_all(studio.sample(studio.default_model, "ddim", 12, 2, **kw))[-1][0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_sample_refuses_bad_requests_before_working(studio):
    for kwargs, message in [(dict(num_images=0), "number of images"), (dict(num_images=65), "number of images"),
                            (dict(seed=-5), "seed"), (dict(steps=0), "positive integer"), (dict(steps=1001), "between 1 and 1000"),
                            (dict(model="someone/missing"), "offline mode is on"), (dict(sampler="nope"), "Unknown sampler")]:
        args = dict(model=studio.default_model, sampler="ddim", seed=0, num_images=1, steps=5) | kwargs
        with pytest.raises(gr.Error, match=message):
            next(studio.sample(**args))


def test_trajectory_frames_readout_and_files(studio, pipe, tmp_path):
    opts = app.make_options(pipe, "ddpm", {"num_inference_steps": 30})
    run = app.Run(pipe, "ddpm", opts, 2, 0, max_frames=10, model_name="tiny")
    steps = list(run)
    traj = run.trajectory
    assert len(steps) == 30 and run.evaluations == 30 and run.seconds > 0
    assert len(traj) == 11 and traj.steps[0] == 0 and traj.steps[-2] == 29 and traj.steps[-1] == 30
    assert traj.timesteps[0] == steps[0].t == 957 and traj.timesteps[-1] == -1  # leading spacing: 29 * (1000 // 30)
    assert traj.abar[0] == pytest.approx(pipe.schedule.alphas_cumprod[957].item())
    assert traj.sigma(0) == pytest.approx((1 - traj.abar[0]) ** 0.5) and traj.sigma(len(traj) - 1) == 0
    assert torch.equal(traj.x_t[0], steps[0].x_t.half()) and torch.equal(traj.x0[3], steps[traj.steps[3]].pred_x0.half())
    assert "t = 957" in traj.readout(0) and "ᾱ_t" in traj.readout(0) and "σ_t" in traj.readout(0)
    assert "sample" in traj.readout(len(traj) - 1)
    xt, x0 = traj.pictures(0)
    assert xt.shape == x0.shape and xt.shape[1] >= app.FRAME_PX
    files = app.trajectory_files(traj, tmp_path)
    import imageio.v3 as iio

    gif = iio.imread(files["gif"], index=None)
    assert gif.shape[0] >= len(traj)  # every frame, then the sample held
    assert files["mp4"].stat().st_size > 0
    with zipfile.ZipFile(files["zip"]) as z:
        assert len(z.namelist()) == len(traj) and z.namelist()[-1].endswith("sample.png")
    data = np.load(files["npz"])
    assert data["x_t"].shape == (11, 2, 1, 8, 8) and list(data["timesteps"]) == traj.timesteps
    assert json.loads(str(data["meta"]))["sampler"] == "ddpm"


def test_trajectory_memory_is_bounded(pipe, monkeypatch):
    monkeypatch.setattr(app, "TRAJECTORY_BYTES", 2 * 2 * 16 * 64 * 10)  # room for 10 frames of 16 images
    assert app.trajectory_budget_frames(pipe, 64) == 10
    assert app.trajectory_budget_frames(pipe, 1) == app.MAX_FRAMES


def test_show_trajectory_and_frames(studio, pipe):
    traj = run_all(studio.sample(studio.default_model, "ddim", 1, 2, steps=5))[-1][-1]
    slider, xt, x0, readout, fig, gif, mp4, files = studio.show_trajectory(traj)
    assert slider["maximum"] == 5 and slider["value"] == 5 and "sample" in readout
    assert gif.endswith(".gif") and len(files) == 4 and len(fig.axes) == 2
    xt2, _, readout2 = studio.show_frame(2, traj)
    assert "Frame 3 / 6" in readout2 and xt2.shape == xt.shape
    assert studio.show_frame(99, traj)[2].startswith("**Frame 6 / 6")
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
    heat, same = app.difference_map(x, x.clone())
    assert same["max_abs_difference"] == 0 and same["psnr_db"] == float("inf") and heat.shape[-1] == 3
    heat, diff = app.difference_map(x, (x + 0.1).clamp(0, 1))
    assert 0 < diff["mean_abs_difference"] <= 0.1 + 1e-6 and diff["psnr_db"] > 19
    m = app.compare_metrics(a, b, diff)
    assert m["faster"] == "b" and m["speedup"] == 20.0 and m["evaluation_ratio"] == 20.0
    md = app.metrics_markdown(m)
    assert "Speed-up: 20.0×" in md and "| Model evaluations | 1000 | 50 |" in md
    with pytest.raises(ValueError):
        app.difference_map(x, torch.rand(1, 1, 8, 8))


def test_compare_runs_both_panels_from_the_same_noise(studio, monkeypatch):
    monkeypatch.setattr(app, "PREVIEW_EVERY_S", 1e9)  # only the first preview
    outs = run_all(studio.compare(studio.default_model, 4, 2, a_sampler="ddpm", a_steps=20, a_variance_type="fixed_small",
                                  b_sampler="ddim", b_steps=5, b_eta=0.0))
    img_a, img_b, (sa, sb), heat, md, metrics = outs[-1]
    assert img_a.shape == img_b.shape == heat.shape and np.array_equal(sa, img_a) and np.array_equal(sb, img_b)
    assert metrics["a"]["steps"] == 20 and metrics["b"]["evaluations"] == 5 and metrics["a"]["options"]["variance_type"] == "fixed_small"
    assert "Speed-up" in md
    # DDIM with eta 0 and 5 steps from the same seed reproduces the same panel as a plain sample
    alone = run_all(studio.sample(studio.default_model, "ddim", 4, 2, steps=5, eta=0.0))[-1][0]
    assert np.array_equal(alone, img_b)
    monkeypatch.setattr(app, "WORK_BUDGET", 100_000)
    with pytest.raises(gr.Error, match="budget"):
        next(studio.compare(studio.default_model, 0, 64, a_sampler="ddpm", a_steps=1000, b_sampler="ddpm", b_steps=1000))


# ------------------------------------------------------------------------------------------- schedule plot

def test_schedule_plot_data(pipe):
    visited = app.planned_timesteps(pipe, "ddim", app.make_options(pipe, "ddim", {"num_inference_steps": 10}))
    assert visited == list(range(900, -1, -100))
    d = app.schedule_plot_data(pipe.schedule.alphas_cumprod, visited + [5000])
    assert len(d["t"]) == len(d["abar"]) == 1000 and list(d["visited"]) == sorted(visited)
    assert np.allclose(d["visited_abar"], pipe.schedule.alphas_cumprod.numpy()[sorted(visited)])
    assert np.allclose(d["log_snr"], pipe.schedule.log_snr().numpy()) and np.all(np.diff(d["log_snr"]) < 0)
    fig = app.schedule_figure(d, "t")
    assert len(fig.axes) == 2
    assert app.Studio("nowhere").schedule_preview("nowhere", "ddim", steps=10) == gr.skip()  # no model loaded: no plot


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

    demo = app.build_app(tiny_model)
    _, url, _ = app.launch(demo, prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    client = Client(url, verbose=False)
    yield client, url, demo
    client.close()
    demo.close()


def test_client_sees_two_named_endpoints(served):
    client, _, _ = served
    info = client.view_api(return_format="dict", print_info=False)
    assert set(info["named_endpoints"]) == {"/sample", "/compare"}
    names = [p["parameter_name"] for p in info["named_endpoints"]["/sample"]["parameters"]]
    assert names[:4] == ["model", "sampler", "seed", "num_images"] and {"steps", "eta", "variance_type", "timestep_spacing"} <= set(names)
    a_names = [p["parameter_name"] for p in info["named_endpoints"]["/compare"]["parameters"]]
    assert {"a_sampler", "a_steps", "b_sampler", "b_eta"} <= set(a_names)


def test_client_sample(served, tiny_model):
    client, _, _ = served
    grid, gallery, grid_file, info = client.predict(sampler="ddim", steps=5, eta=0.0, seed=3, num_images=4, api_name="/sample")
    assert Image.open(grid).size[0] >= app.DISPLAY_PX and len(gallery) == 4
    assert Image.open(grid_file).size == (22, 22) and "4 images" in info
    # streaming: a job holds every yield (previews, then the result)
    job = client.submit(sampler="ddpm", steps=40, seed=3, num_images=2, api_name="/sample")
    outputs = job.outputs() if job.result() else []
    assert len(outputs) >= 2 and "40 steps" in outputs[-1][3]


def test_client_compare(served):
    client, _, _ = served
    a, b, pair, diff, md, metrics = client.predict(seed=1, num_images=2, a_sampler="ddpm", a_steps=30, b_sampler="ddim",
                                                   b_steps=5, b_eta=0.0, api_name="/compare")
    assert Image.open(a).size == Image.open(b).size == Image.open(diff).size and len(pair) == 2
    assert metrics["a"]["evaluations"] == 30 and metrics["b"]["evaluations"] == 5 and metrics["speedup"] > 0
    assert "Speed-up" in md


def test_client_errors_are_clear(served, monkeypatch):
    from gradio_client.exceptions import AppError

    client, _, _ = served
    with pytest.raises(AppError, match="nobody/nothing.*offline mode is on"):
        client.predict(model="nobody/nothing", steps=5, num_images=1, api_name="/sample")
    monkeypatch.setattr(app, "WORK_BUDGET", 100_000)  # the server runs in this process
    with pytest.raises(AppError, match="above the CPU budget of 100,000"):
        client.predict(a_steps=1000, b_steps=50, num_images=4, api_name="/compare")
    monkeypatch.undo()
    with pytest.raises(AppError, match="seed"):
        client.predict(seed=-1, steps=5, num_images=1, api_name="/sample")
    with pytest.raises(AppError):
        client.predict(steps=0, num_images=1, api_name="/sample")
    # the server still works afterwards
    assert "**1 image**" in client.predict(steps=2, num_images=1, api_name="/sample")[3]


def test_client_cancel_stops_a_long_run(served, monkeypatch):
    """Stop (a cancel) ends the generator on the server: the sampler takes no more steps."""
    client, _, _ = served
    monkeypatch.setattr(app, "PREVIEW_EVERY_S", 0.05)
    taken = [0]
    plain_iter = app.Run.__iter__

    def counting(run):
        for step in plain_iter(run):
            taken[0] += 1
            yield step

    monkeypatch.setattr(app.Run, "__iter__", counting)
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
    assert "2 steps" in client.predict(steps=2, num_images=1, api_name="/sample")[3]  # the queue is free again


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
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
               "CPU_CORES": "1", "GRADIO_ANALYTICS_ENABLED": "False", "COMPILE": "0"}
        log = open(tmp_path / "app.log", "w")
        proc = subprocess.Popen([sys.executable, str(root / "app.py"), "--model", tiny_model, "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
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
            info = client.predict(model="someone/tiny-ddpm", steps=3, num_images=2, api_name="/sample")[3]
            assert "2 images" in info and "3 steps" in info
            fetched = {path.split("/resolve/main/")[-1] for method, path in hub.requests if method == "GET"}
            assert {"unet/config.json", "unet/diffusion_pytorch_model.safetensors"} <= fetched
            with pytest.raises(AppError, match="No Hub repo named 'nobody/missing'"):
                client.predict(model="nobody/missing", steps=3, num_images=1, api_name="/sample")
            assert "1 image" in client.predict(steps=2, num_images=1, api_name="/sample")[3]
            client.close()
        finally:
            proc.terminate()
            proc.wait(20)
            log.close()
