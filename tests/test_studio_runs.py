"""The studio's runs: previews then results, cancel points, trajectories, Compare from the same noise, the
schedule plot, memory and the bounded temp folder."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.trajectory import frame_steps
from studio import media, options, runs, settings

from conftest import count_files, make_studio, png, run_all

pytestmark = pytest.mark.usefixtures("one_thread")


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
    def step_only(o, line: int) -> bool:  # every output skipped but the result line
        return all(isinstance(v, type(gr.skip())) for i, v in enumerate(o) if i != line)

    monkeypatch.setattr(runs, "PROGRESS_EVERY_S", 0.0)
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



# ------------------------------------------------------------------------------------------- temp folder


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
