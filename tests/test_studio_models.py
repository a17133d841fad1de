"""The studio's models: the store (errors keep the current model, slow loads do not block, LRU) and Hub downloads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gradio as gr
import pytest

from studio import models
from studio.settings import Settings

from conftest import write_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


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
