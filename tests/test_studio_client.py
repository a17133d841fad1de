"""The studio through gradio_client against a launched app: endpoints, results, errors, cancel, the cache."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from studio import runs, settings, ui

from conftest import a_picture, count_files, make_studio

pytestmark = pytest.mark.usefixtures("one_thread")


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
    methods = [f.fn for f in fns
               if type(getattr(f.fn, "__self__", None)).__name__ in ("Studio", "Explore", "ArenaRuns")]
    names = {m.__name__ for m in methods}
    assert {"sample", "compare", "show_frame", "interpolate", "reconstruct", "consistency", "run"} <= names
    off = [m.__name__ for m in methods if m.__name__ not in no_torch and not getattr(m, "runs_on_compute_thread", 0)]
    assert off == []


def test_client_sees_the_named_endpoints(served):
    client, _, _ = served
    info = client.view_api(return_format="dict", print_info=False)
    assert set(info["named_endpoints"]) == {"/sample", "/compare", "/interpolate", "/reconstruct", "/consistency",
                                            "/arena"}
    arena = [p["parameter_name"] for p in info["named_endpoints"]["/arena"]["parameters"]]
    assert {"seed", "num_samples", "evaluations", "sampler_1", "options_1", "sampler_4", "options_4"} <= set(arena)
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



def test_client_arena(served):
    """``/arena`` returns the plot, the strip, the table, the result line and the files; the rows are in the JSON."""
    import json

    from gradio_client.exceptions import AppError

    client, _, _ = served
    plot, strip, table, info, files = client.predict(sampler_1="ddim", sampler_2="unipc", options_2="solver_order=2",
                                                     evaluations=[2, 3], num_samples=64, seed=0, api_name="/arena")
    assert Path(plot).is_file() and Path(strip).is_file() and "**4 rows**" in info
    rows = json.loads(Path(files[0]).read_text())["rows"]
    assert [r["name"] for r in rows] == ["ddim@2", "ddim@3", "unipc:solver_order=2@2", "unipc:solver_order=2@3"]
    assert "| UNIPC solver_order=2 | 3 | 3 |" in table  # a 16 x 16 model: RMSE only, no classifier columns
    with pytest.raises(AppError, match="Choose at least one sampler"):
        client.predict(sampler_1="", sampler_2="", evaluations=[2], num_samples=64, api_name="/arena")


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
