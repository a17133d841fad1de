"""Issue #23: what the studio tells a visitor. Stop leaves where it stopped, a refused value is a message that
stays and one log line (no traceback), Explore's progress reaches its end, a new image clears the old curve.
The same behaviour in Chromium is in tests/test_browser.py."""

from __future__ import annotations

import gradio as gr
import pytest

from studio.runs import running_note, stopped_note

from conftest import make_studio, write_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.mark.parametrize("line,said", [
    ("DDPM: step 45 / 1000 · preview: predicted x0 at step 40", "**Stopped** at step 45 of 1000 (DDPM)."),
    ("Panel B (DDIM): step 3 / 50 · t = 941", "**Stopped** at step 3 of 50 (Panel B (DDIM))."),
    ("Decoding 9 frames: step 0 / 50 · starting", "**Stopped** at step 0 of 50 (Decoding 9 frames)."),
    ("20 steps: encoding: step 7 / 20", "**Stopped** at step 7 of 20 (20 steps: encoding)."),
])
def test_stop_says_where_it_stopped(line, said):
    assert stopped_note(line).startswith(said)


@pytest.mark.parametrize("line", ["**16 images** · DDIM · 50 steps · seed 0", "Press **Generate**.", "", None])
def test_stop_after_a_result_leaves_the_result_line(line):
    assert isinstance(stopped_note(line), type(gr.skip()))


def test_running_note_is_what_stop_reads():
    assert stopped_note(running_note("DDPM", 12, 1000, "t = 987")).startswith("**Stopped** at step 12 of 1000")


def test_a_refusal_is_a_message_that_stays_and_one_log_line(capsys):
    from studio.errors import refused

    e = refused("Steps must be a whole number from 1 to 1000; got 2.5.\nSecond line.")
    assert isinstance(e, gr.Error) and e.duration is None and e.print_exception is False
    assert capsys.readouterr().out == "[studio] refused: Steps must be a whole number from 1 to 1000; got 2.5. " \
        "Second line.\n"


def test_a_refused_request_logs_one_line_and_no_traceback(tiny_model, capsys):
    studio = make_studio(tiny_model)
    with pytest.raises(gr.Error) as e:
        list(studio.sample(studio.default_model, "ddim", 0, 2.5, steps=3))
    assert e.value.print_exception is False and e.value.duration is None
    out = capsys.readouterr()
    assert out.out.count("[studio] refused: The number of images must be a whole number") == 1
    assert "Traceback" not in out.out + out.err


class Recorder:
    """A stand-in for gr.Progress that keeps every fraction it is given."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def __call__(self, value: float, desc: str = "") -> None:
        self.values.append(value)


@pytest.mark.parametrize("with_images", [False, True])
def test_interpolation_progress_runs_to_the_end(tiny_model, tmp_path, with_images):
    """16 frames are decoded in one pass of K steps (and two images encoded in one more): the bar's total is
    K (or 2K), not frames x K, so it ends at 100 % instead of stalling at 1/frames."""
    from PIL import Image

    from studio.explore import Explore

    images = {}
    if with_images:
        for name in ("a", "b"):
            Image.new("L", (8, 8), 100 if name == "a" else 200).save(tmp_path / f"{name}.png")
        images = dict(image_a=str(tmp_path / "a.png"), image_b=str(tmp_path / "b.png"))
    explore = Explore(make_studio(tiny_model))
    bar = Recorder()
    outs = list(explore.interpolate(explore.studio.default_model, 0, 1, 16, 5, progress=bar, **images))
    assert max(bar.values) == pytest.approx(1.0) and bar.values == sorted(bar.values)
    assert outs[-1][2].startswith("**16 frames**")


def test_every_explore_run_ends_its_bar(tiny_model, tmp_path):
    from PIL import Image

    from studio.explore import Explore

    Image.new("L", (8, 8), 100).save(tmp_path / "a.png")
    explore = Explore(make_studio(tiny_model))
    model = explore.studio.default_model
    for run in (
        lambda bar: explore.reconstruct(model, str(tmp_path / "a.png"), 4, progress=bar),
        lambda bar: explore.error_curve(model, str(tmp_path / "a.png"), progress=bar),
        lambda bar: explore.consistency(model, 0, 2, [5, 10], progress=bar),
    ):
        bar = Recorder()
        list(run(bar))
        assert max(bar.values) == pytest.approx(1.0) and bar.values == sorted(bar.values)


def test_a_refusal_goes_into_the_result_line_and_clears_the_old_pictures(tiny_model):
    """Before the toast: the result line says why nothing ran, the previous pictures go (an older result never
    sits under a message about a newer request); the last trajectory (the Denoising tab's) stays."""
    studio = make_studio(tiny_model)
    gen = studio.sample(studio.default_model, "ddim", -1, 2, steps=3)
    picture, download, line, trajectory = next(gen)
    assert picture is None and download is None and isinstance(trajectory, type(gr.skip()))
    assert line.startswith("**Not run:** The seed must be from 0 to ")
    with pytest.raises(gr.Error, match="The seed must be from 0"):
        next(gen)
    *pictures, line, metrics = next(studio.compare(studio.default_model, 0, 0, a_sampler="ddpm", b_sampler="ddim"))
    assert pictures == [None, None, None, None] and metrics is None and line.startswith("**Not run:** The number")


def test_a_fault_is_not_dressed_as_a_refusal():
    """A fault (a plain gr.Error, or any other exception) keeps Gradio's traceback and the pictures."""
    from studio.errors import shows_refusals

    @shows_refusals(line=1, outputs=2)
    def broken():
        yield "picture", "line"
        raise gr.Error("Internal error: something broke.")

    gen = broken()
    assert next(gen) == ("picture", "line")
    with pytest.raises(gr.Error, match="Internal error"):
        next(gen)


@pytest.mark.parametrize("steps,spacing,noted", [(1, "leading", True), (1, "trailing", False), (2, "leading", False)])
def test_a_plan_that_cannot_denoise_is_said_beside_the_result(tiny_model, steps, spacing, noted):
    """One DDIM step under leading selection is at t = 0: the result is noise, and the result line says why."""
    studio = make_studio(tiny_model)
    *_, (_, _, line, _) = studio.sample(studio.default_model, "ddim", 0, 1, steps=steps, timestep_spacing=spacing)
    assert ("evaluates the model first at t = 0 of 1000" in line) is noted
    assert ("Use more steps or trailing selection" in line) is noted


def test_library_messages_use_the_names_on_the_page(tiny_model):
    from diffusion import load
    from studio.options import make_options

    with pytest.raises(gr.Error, match=r"Steps must be a whole number, got 2.5"):
        make_options(load(tiny_model), "ddim", {"num_inference_steps": 2.5})
    with pytest.raises(gr.Error, match=r"Steps offset must be a non-negative integer"):
        make_options(load(tiny_model), "ddim", {"steps_offset": -1})
