"""Loading from the Hub goes through huggingface_hub against a loopback server named by HF_ENDPOINT,
then from the cache offline. Each scenario runs in a subprocess because huggingface_hub reads
HF_ENDPOINT and HF_HUB_OFFLINE when it is imported."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DIFFUSERS_TINY, GOOGLE_TINY, write_diffusers_checkpoint
from hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"names": ["a", "b", "c"], "null_label": 3, "guidance_scale": 2.0}

# Loads each (repo, revision) and reports the UNet's output on a fixed input, or the error message.
SCRIPT = r"""
import json, sys, time, torch, diffusion
results = {}
for repo, revision in json.loads(sys.argv[1]):
    start = time.perf_counter()
    try:
        pipe = diffusion.load(repo, revision)
        torch.manual_seed(0)
        c = pipe.unet.config
        x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size)
        labels = torch.tensor([1, 2]) if pipe.class_conditional else None
        with torch.no_grad():
            out = pipe.unet(x, torch.tensor([3, 700]), labels).tolist()
        classes = json.loads(pipe.classes.to_json()) if pipe.classes else None
        results[f"{repo}@{revision}"] = {"out": out, "sched": pipe.config, "classes": classes}
    except diffusion.CheckpointError as e:
        results[f"{repo}@{revision}"] = {"error": str(e)}
    results[f"{repo}@{revision}"]["seconds"] = time.perf_counter() - start
print("RESULTS " + json.dumps(results))
"""


def run_loads(loads: list[tuple[str, str | None]], hf_home: Path, endpoint: str, offline: bool) -> dict:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1" if offline else "0",
           "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "5", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("HF_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(loads)], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(text for text in proc.stdout.splitlines() if text.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):])


def reference(unet) -> np.ndarray:
    torch.manual_seed(0)
    c = unet.config
    x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size)
    labels = torch.tensor([1, 2]) if c.num_class_embeds else None
    with torch.no_grad():
        return unet(x, torch.tensor([3, 700]), class_labels=labels).sample.numpy()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A loopback Hub with a flat google-style repo (safetensors and .bin, old attention names), a
    subfolder repo, and a repo with two revisions holding different weights."""
    tmp = tmp_path_factory.mktemp("hub")
    refs = {}
    with HubServer() as server:
        flat = tmp / "flat"
        refs["flat"] = write_diffusers_checkpoint(
            flat,
            GOOGLE_TINY,
            layout="flat",
            weights="safetensors",
            old_names=True,
            scheduler={"variance_type": "fixed_large", "clip_sample": False},
        )
        write_diffusers_checkpoint(flat / "_bin", GOOGLE_TINY, layout="flat", weights="bin", old_names=True)
        (flat / "diffusion_pytorch_model.bin").write_bytes((flat / "_bin" / "diffusion_pytorch_model.bin").read_bytes())
        for f in (flat / "_bin").iterdir():
            f.unlink()
        (flat / "_bin").rmdir()
        server.add_folder("google-test/ddpm-flat", flat)
        sub = tmp / "sub"
        refs["sub"] = write_diffusers_checkpoint(sub, DIFFUSERS_TINY, layout="subfolder")
        server.add_folder("someone/ddpm-sub", sub)
        cond = tmp / "cond"  # class-conditional, with the classes.json of this project beside model_index.json
        refs["cond"] = write_diffusers_checkpoint(cond, {**DIFFUSERS_TINY, "num_class_embeds": 4}, layout="subfolder")
        (cond / "classes.json").write_text(json.dumps(CLASSES))
        server.add_folder("someone/ddpm-cond", cond)
        for rev, seed in (("main", 1), ("v1", 2)):
            refs[rev] = write_diffusers_checkpoint(tmp / rev, DIFFUSERS_TINY, layout="subfolder", seed=seed)
            server.add_folder("someone/versioned", tmp / rev, revision=rev)
        hf_home = tmp / "hf_home"
        results = run_loads([("google-test/ddpm-flat", None), ("someone/ddpm-sub", None), ("someone/ddpm-cond", None),
                             ("someone/versioned", "v1"),
                             ("someone/versioned", None), ("nobody/missing", None), ("someone/versioned", "nope")],
                            hf_home, server.url, offline=False)
        requests = list(server.requests)
    # The server is gone now: what follows can only come from the cache.
    offline = run_loads([("google-test/ddpm-flat", None), ("someone/ddpm-sub", None), ("someone/ddpm-cond", None),
                         ("never/cached", None)],
                        hf_home, server.url, offline=True)
    unreachable = run_loads(
        [("someone/ddpm-sub", None), ("google-test/ddpm-flat", None)], tmp / "empty_home", server.url, offline=False
    )
    cached_unreachable = run_loads([("someone/ddpm-sub", None)], hf_home, server.url, offline=False)
    with socket.socket() as blackhole:  # accepts connections (the kernel's backlog) and never answers
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        silent = run_loads(
            [("someone/ddpm-sub", None), ("nobody/missing", None)],
            hf_home,
            f"http://127.0.0.1:{blackhole.getsockname()[1]}",
            offline=False,
        )
    return {"refs": refs, "online": results, "requests": requests, "offline": offline, "unreachable": unreachable,
            "cached_unreachable": cached_unreachable, "silent": silent}


def test_flat_google_repo_loads_through_hf_endpoint(hub):
    r = hub["online"]["google-test/ddpm-flat@None"]
    assert "error" not in r, r
    np.testing.assert_allclose(np.array(r["out"]), reference(hub["refs"]["flat"]), atol=1e-5)
    assert r["sched"]["variance_type"] == "fixed_large" and r["sched"]["clip_sample"] is False


def test_safetensors_preferred_and_bin_never_downloaded(hub):
    fetched = [path for method, path in hub["requests"] if method == "GET"]
    assert any(p.endswith("ddpm-flat/resolve/main/diffusion_pytorch_model.safetensors") for p in fetched)
    assert not any(p.endswith(".bin") for p in fetched)


def test_subfolder_repo_loads(hub):
    r = hub["online"]["someone/ddpm-sub@None"]
    assert "error" not in r, r
    np.testing.assert_allclose(np.array(r["out"]), reference(hub["refs"]["sub"]), atol=1e-5)


def test_class_conditional_repo_loads_with_its_classes_online_and_from_the_cache(hub):
    for mode in ("online", "offline"):
        r = hub[mode]["someone/ddpm-cond@None"]
        assert "error" not in r, r
        np.testing.assert_allclose(np.array(r["out"]), reference(hub["refs"]["cond"]), atol=1e-5)
        assert r["classes"] == CLASSES
    assert hub["online"]["someone/ddpm-sub@None"]["classes"] is None  # no classes.json: an unconditional model


def test_revision_pinning(hub):
    v1, main = hub["online"]["someone/versioned@v1"], hub["online"]["someone/versioned@None"]
    np.testing.assert_allclose(np.array(v1["out"]), reference(hub["refs"]["v1"]), atol=1e-5)
    np.testing.assert_allclose(np.array(main["out"]), reference(hub["refs"]["main"]), atol=1e-5)
    assert not np.allclose(np.array(v1["out"]), np.array(main["out"]))


def test_unknown_repo_and_revision_errors(hub):
    assert "No Hub repo named 'nobody/missing'" in hub["online"]["nobody/missing@None"]["error"]
    assert "no revision 'nope'" in hub["online"]["someone/versioned@nope"]["error"]


def test_offline_loads_from_cache(hub):
    for repo, ref in (("google-test/ddpm-flat", "flat"), ("someone/ddpm-sub", "sub")):
        r = hub["offline"][f"{repo}@None"]
        assert "error" not in r, r
        np.testing.assert_allclose(np.array(r["out"]), reference(hub["refs"][ref]), atol=1e-5)


def test_offline_and_not_cached_names_the_repo(hub):
    msg = hub["offline"]["never/cached@None"]["error"]
    assert "'never/cached'" in msg and "offline" in msg and "cache" in msg


def test_unreachable_hub_names_the_repo(hub):
    msg = hub["unreachable"]["someone/ddpm-sub@None"]["error"]
    assert "'someone/ddpm-sub'" in msg and "could not be reached" in msg


def test_an_unreachable_hub_costs_one_quick_probe(hub):
    """Refused connections: one probe, then the cache alone: seconds, not huggingface_hub's ~25 s of retries
    per file; a cached repo still loads."""
    for key in ("someone/ddpm-sub@None", "google-test/ddpm-flat@None"):
        r = hub["unreachable"][key]
        assert "could not be reached" in r["error"] and r["seconds"] < 5, r
    cached = hub["cached_unreachable"]["someone/ddpm-sub@None"]
    assert "error" not in cached and cached["seconds"] < 5, cached
    np.testing.assert_allclose(np.array(cached["out"]), reference(hub["refs"]["sub"]), atol=1e-5)


def test_a_silent_hub_costs_the_probe_timeout(hub):
    """A Hub that accepts connections and never answers: the probe gives up after HUB_PROBE_TIMEOUT (3 s), then
    the cache: a cached repo loads, an unknown one is a clear error, each within seconds."""
    cached, missing = hub["silent"]["someone/ddpm-sub@None"], hub["silent"]["nobody/missing@None"]
    assert "error" not in cached and cached["seconds"] < 8, cached
    assert (
        "'nobody/missing'" in missing["error"] and "could not be reached" in missing["error"] and missing["seconds"] < 8
    ), missing
