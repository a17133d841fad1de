"""The studio in a real browser: Python Playwright driving Debian's Chromium (``playwright install``
cannot download browsers here). Opens the page, generates, checks the images, runs Compare and
looks at both panels, then the Denoising tab.

Also the script that takes the screenshots in docs/::

    PYTHONPATH=. python tests/test_browser.py --model checkpoints/fashion-mnist --out docs   # from the repository root
    PYTHONPATH=. python tests/test_browser.py --classes-only --out docs   # only the class-conditional model's
    PYTHONPATH=. python tests/test_browser.py --arena-only --out docs     # only the Arena tab's (~10 min on 2 cores)
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 180_000  # generous: the test machine's CPU is shared with training runs


def launch_studio(model: str, compile: bool = False, **settings: Any):
    """Build and serve the app in this process (``settings``: :class:`studio.settings.Settings` fields); returns
    (demo, url)."""
    from studio.handlers import Studio
    from studio.settings import Settings
    from studio.ui import build_app, launch

    demo = build_app(Studio(Settings.from_env(default_model=model, compile=compile, **settings)))
    _, url, _ = launch(demo, prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    return demo, url


def boxes_overlap(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def open_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@contextlib.contextmanager
def chromium_page(url: str, **page_options: Any) -> Iterator[Any]:
    """A headless Chromium page (1400 x 1000, the tests' generous timeout) at ``url``, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = open_browser(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, **page_options)
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            yield page
        finally:
            browser.close()


def slider_value(page, elem_id: str, value: int) -> None:
    """Type a value into a slider's number box (as a user would) and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    import torch

    from conftest import write_tiny_model

    torch.set_num_threads(1)
    demo, url = launch_studio(str(write_tiny_model(tmp_path_factory.mktemp("browser") / "tiny")))
    yield url
    demo.close()


def test_generate_compare_and_denoising_in_chromium(studio_url):
    from playwright.sync_api import expect

    # A deep link pre-fills the Sample tab: 4 images, 5 steps, seed 7.
    with chromium_page(f"{studio_url}?seed=7&steps=5&n=4") as page:
        expect(page.locator("#s_steps input[type=number]")).to_have_value("5", timeout=TIMEOUT_MS)
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#preview img")).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.get_by_text("5 model evaluations")).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator("#preview img")).to_have_count(1)  # one view of the samples, not two
        expect(page.locator("#s-download")).to_be_visible()

        page.get_by_role("tab", name="Compare").click()
        expect(page.get_by_label("Panel A sampler")).to_be_visible()
        expect(page.get_by_label("Panel B sampler")).to_be_visible()
        slider_value(page, "a_steps", 20)  # DDPM 1000 would be slow on a busy CPU
        page.get_by_role("button", name="Compare", exact=True).click()
        expect(page.locator("#compare-a img")).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator("#compare-b img")).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.get_by_text("Speed-up")).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator("#diff-map img")).to_be_visible()

        page.get_by_role("tab", name="Denoising").click()
        expect(page.locator("#frame-xt img")).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator("#frame-x0 img")).to_be_visible()
        expect(page.get_by_text("Frame 5 / 5")).to_be_visible()
        expect(page.locator("#d_files [aria-label$='.gif']")).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator("#d_files [aria-label$='trajectory.npz']")).to_be_visible()
        expect(page.locator("#d-mp4 video")).to_be_visible(timeout=TIMEOUT_MS)
        gif, mp4 = page.locator("#d-gif").bounding_box(), page.locator("#d-mp4").bounding_box()
        assert gif and mp4 and not boxes_overlap(gif, mp4), (gif, mp4)  # the two animations side by side

        page.get_by_role("tab", name="Explore").click()
        slider_value(page, "i_steps", 3)
        slider_value(page, "i_frames", 4)
        page.get_by_role("button", name="Interpolate", exact=True).click()
        expect(page.locator("#i-strip img")).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.get_by_text("4 frames")).to_be_visible(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def bundled_url():
    """The studio over the bundled Fashion-MNIST model: runs long enough (DDPM 1000 steps) to press Stop in."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    demo, url = launch_studio(str(Path(__file__).resolve().parents[1] / "checkpoints" / "fashion-mnist"))
    yield url
    demo.close()


RECORD_PERCENTS = """(id) => {  // every percentage the progress area shows, kept by the page as it changes
    window.percents = [];
    const area = document.getElementById(id);
    new MutationObserver(() => {
        for (const m of area.innerText.matchAll(/([0-9.]+)%/g)) window.percents.push(parseFloat(m[1]));
    }).observe(area, {subtree: true, childList: true, characterData: true});
}"""


def test_the_studio_says_what_happens_in_chromium(bundled_url, tmp_path):
    """Issue #23 as a visitor sees it: Stop leaves "Stopped at step N of M"; a refused value's message is still
    up 10 s later; Explore's bar reaches its end and sits in its own area, off the result line; a new image
    clears the old error curve; an upload that is not an image gets a message."""
    import re

    from playwright.sync_api import expect

    examples = sorted((Path(__file__).resolve().parents[1] / "studio" / "examples").glob("*.png"))
    with chromium_page(f"{bundled_url}?sampler=ddpm&n=16") as page:
        expect(page.locator("#s_steps input[type=number]")).to_have_value("1000", timeout=TIMEOUT_MS)
        page.get_by_role("button", name="Generate").click()
        expect(page.get_by_text(re.compile(r"DDPM: step [1-9]\d* / 1000"))).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.get_by_role("button", name="Generate")).to_be_disabled()  # no second run queued behind it
        page.get_by_role("button", name="Stop").first.click()
        stopped = page.get_by_text(re.compile(r"Stopped at step \d+ of 1000 \(DDPM\)"))
        expect(stopped).to_be_visible(timeout=2000)
        page.wait_for_timeout(1500)
        expect(stopped).to_be_visible(timeout=100)  # no late update wrote over it
        expect(page.get_by_role("button", name="Generate")).to_be_enabled()

        for box, typed, used, said in [
            ("s_steps", "0", "1", "Steps runs from 1 to 1000: 0 is not used, 1 is."),
            ("s_n", "1000", "64", "Number of images runs from 1 to 64: 1000 is not used, 64 is."),
        ]:  # typed out of range: said, and the box shows what will run (the page used to clamp silently)
            page.locator(f"#{box} input[type=number]").fill(typed)
            page.locator(f"#{box} input[type=number]").press("Enter")
            expect(page.get_by_test_id("toast-text").filter(has_text=said)).to_be_visible(timeout=TIMEOUT_MS)
            expect(page.locator(f"#{box} input[type=number]")).to_have_value(used, timeout=TIMEOUT_MS)
        page.locator("#s_steps input[type=number]").fill("1000")
        page.locator("#s_steps input[type=number]").press("Enter")
        page.locator("#s_n input[type=number]").fill("2.5")
        page.locator("#s_n input[type=number]").press("Enter")
        page.get_by_role("button", name="Generate").click()
        message = page.get_by_test_id("toast-text").filter(has_text="The number of images must be a whole number")
        expect(message).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator("#preview img")).to_have_count(0)  # the stopped run's preview is gone
        page.wait_for_timeout(10_000)
        expect(message).to_be_visible(timeout=100)  # still there: it stays until closed

        page.reload()
        page.get_by_role("tab", name="Explore").click()
        slider_value(page, "i_frames", 16)
        slider_value(page, "i_steps", 40)
        page.evaluate(RECORD_PERCENTS, "i-progress")
        page.get_by_role("button", name="Interpolate", exact=True).click()
        expect(page.get_by_text(re.compile(r"Decoding 16 frames: step \d+ / 40"))).to_be_visible(timeout=TIMEOUT_MS)
        bar, info = page.locator("#i-progress").bounding_box(), page.locator("#i-info").bounding_box()
        assert bar and info and not boxes_overlap(bar, info), (bar, info)
        expect(page.locator("#i-info")).to_contain_text("16 frames slerped between", timeout=TIMEOUT_MS)
        percents = page.evaluate("window.percents")
        assert percents and max(percents) >= 90, percents  # it was 1/frames = 6 % before

        page.get_by_role("tab", name="Invert and reconstruct").click()
        page.locator("#r-image input[type=file]").set_input_files(str(examples[0]))
        slider_value(page, "r_steps", 10)
        page.get_by_role("button", name="Error against steps (10, 20, 50, 100)").click()
        expect(page.get_by_role("columnheader", name="MSE per dimension")).to_be_visible(timeout=TIMEOUT_MS)
        page.locator("#r-image button[aria-label='Remove Image']").click()
        page.locator("#r-image input[type=file]").set_input_files(str(examples[1]))
        curve_header = page.get_by_role("columnheader", name="MSE per dimension")
        expect(curve_header).to_have_count(0, timeout=TIMEOUT_MS)  # the old image's curve went with it
        page.get_by_role("button", name="Invert and reconstruct", exact=True).click()
        expect(page.get_by_text("per-dimension MSE")).to_be_visible(timeout=TIMEOUT_MS)
        expect(curve_header).to_have_count(0)

        (tmp_path / "notes.png").write_text("not an image")
        page.locator("#r-image button[aria-label='Remove Image']").click()
        page.locator("#r-image input[type=file]").set_input_files(str(tmp_path / "notes.png"))
        page.get_by_role("button", name="Invert and reconstruct", exact=True).click()
        refusal = "The image (notes.png) cannot be used: not an image file"
        expect(page.get_by_test_id("toast-text").filter(has_text=refusal)).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator("#r-info")).to_contain_text(f"Not run: {refusal}")  # also where the result goes


ROOT = Path(__file__).resolve().parents[1]
CONDITIONAL = ROOT / "checkpoints" / "fashion-mnist-cond"


def tiles(png: Path, nrow: int, size: int = 28) -> Any:
    """The images of a downloaded grid (``nrow`` a row, 2 px padding, each pixel an n x n block) as uint8
    (N, 1, size, size), for the classifier."""
    import numpy as np
    import torch
    from PIL import Image

    grid = np.asarray(Image.open(png).convert("L"))
    tile = (grid.shape[1] - 2 * (nrow + 1)) // nrow
    rows = (grid.shape[0] - 2) // (tile + 2)
    out = [grid[2 + r * (tile + 2):2 + r * (tile + 2) + tile, 2 + c * (tile + 2):2 + c * (tile + 2) + tile]
           [::tile // size, ::tile // size] for r in range(rows) for c in range(nrow)]
    return torch.from_numpy(np.stack(out))[:, None]


@pytest.fixture(scope="module")
def conditional_url():
    """The studio as it starts by default (the unconditional bundled model); a link picks the conditional one."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    demo, url = launch_studio(str(ROOT / "checkpoints" / "fashion-mnist"))
    yield url
    demo.close()


def test_stop_on_a_queued_run_in_chromium(conditional_url):
    """Stop on a run still waiting in the queue behind another tab's cancels it: its result line stays as it was,
    its button is back, and the other tab's run goes on to its end. Its progress box is not checked: it sometimes
    shows a bare "Error" afterwards (Gradio's cancel of a queued job racing its completion message; seen with the
    studio's earlier wiring too), a known fault written up in the issue notes."""

    from playwright.sync_api import expect

    with chromium_page(f"{conditional_url}?model=checkpoints/fashion-mnist-cond") as page:
        expect(page.locator("#s_class")).to_be_visible(timeout=TIMEOUT_MS)
        page.get_by_role("tab", name="Explore").click()
        page.locator("#i_steps input[type=number]").fill("20")
        page.locator("#i_steps input[type=number]").press("Enter")
        page.get_by_role("button", name="Interpolate").click()
        expect(page.locator("#i-info")).to_contain_text("Decoding 9 frames", timeout=TIMEOUT_MS)
        page.get_by_role("tab", name="Sample").click()
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#s-progress")).to_contain_text("queue", timeout=TIMEOUT_MS)
        page.get_by_role("button", name="Stop").first.click()
        page.wait_for_timeout(1500)
        expect(page.locator("#s-info")).to_contain_text("Press Generate", timeout=100)
        expect(page.get_by_role("button", name="Generate")).to_be_enabled()
        page.get_by_role("tab", name="Explore").click()
        expect(page.locator("#i-info")).to_contain_text("9 frames", timeout=TIMEOUT_MS)
        expect(page.locator("#i-info")).not_to_contain_text("Decoding", timeout=TIMEOUT_MS)  # it ran to its end


def test_pick_a_class_and_a_guidance_in_chromium(conditional_url, tmp_path):
    """A link chooses the bundled class-conditional model, a class and a guidance scale; the visitor then picks
    another class in the picker and generates: the project's classifier agrees that the images are of it."""
    from playwright.sync_api import expect

    from training import classifier as clf

    link = f"{conditional_url}?model=checkpoints/fashion-mnist-cond&class=sneaker&guidance=4&n=8&steps=20"
    with chromium_page(link, accept_downloads=True) as page:
        expect(page.locator("#s_class input")).to_have_value("7 · Sneaker", timeout=TIMEOUT_MS)
        expect(page.locator("#s_guidance input[type=number]")).to_have_value("4")
        expect(page.get_by_text("fashion-mnist-cond", exact=False).first).to_be_visible()
        page.locator("#s_class input").click()
        page.get_by_role("option", name="1 · Trouser").click()
        slider_value(page, "s_guidance", 3)
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#s-info")).to_contain_text("class Trouser · guidance 3", timeout=TIMEOUT_MS)
        with page.expect_download() as download:
            page.locator("#s-download").click()
        path = tmp_path / "trousers.png"
        download.value.save_as(path)
        page.locator("#s_class input").click()
        page.get_by_role("option", name="One of each (a row per class)").click()
        slider_value(page, "s_n", 2)
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#s-info")).to_contain_text("20 images · one of each class", timeout=TIMEOUT_MS)
    model, _, _ = clf.load(ROOT / "checkpoints" / "fashion-mnist-classifier")
    images = tiles(path, nrow=3)[:8]  # 8 images in a square grid: 3 a row
    assert images.shape == (8, 1, 28, 28)
    predicted = clf.extract(model, images)[1].argmax(1)
    assert (predicted == 1).sum() >= 7, predicted.tolist()


@pytest.fixture(scope="module")
def small_28_url(tmp_path_factory):
    """The studio over a very small random 1x28x28 model: the arena's rows, its converged solution and the
    classifier's scores in seconds."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from conftest import SMALL_28, write_diffusers_checkpoint

    root = tmp_path_factory.mktemp("browser-arena")
    write_diffusers_checkpoint(root / "small28", SMALL_28)
    demo, url = launch_studio(str(root / "small28"), arena_cache=str(root / "cache"))
    yield url, root
    demo.close()


def test_the_arena_in_chromium(small_28_url):
    """A link opens the Arena tab with two samplers and three budgets; a run of 64 samples fills the plot, the strip
    and the table, whose numbers are those of ``evaluate --arena`` with the same settings (the command the page
    shows, over the studio's cached converged solution); the rows download as JSON and CSV."""
    import json
    import re
    import shlex
    import urllib.parse

    from playwright.sync_api import expect

    from training import evaluate as ev

    url, root = small_28_url
    spec = {"contenders": ["ddim", "unipc:solver_order=2"], "budgets": [2, 3, 5], "n": 64, "seed": 1}
    with chromium_page(f"{url}?tab=arena&arena={urllib.parse.quote(json.dumps(spec))}") as page:
        expect(page.locator("#arena-options-2 textarea, #arena-options-2 input")).to_have_value(
            "solver_order=2", timeout=TIMEOUT_MS)
        expect(page.locator("#arena-seed input")).to_have_value("1")
        expect(page.locator("#arena-evaluations .token")).to_have_count(3)
        page.get_by_role("button", name="Run the arena").click()
        expect(page.locator("#arena-info")).to_contain_text("6 rows", timeout=TIMEOUT_MS)
        expect(page.locator("#arena-plot img")).to_be_visible()
        expect(page.locator("#arena-strip img")).to_be_visible()
        box = page.locator("#arena-plot img").bounding_box()
        assert box and box["width"] >= 600, box  # big enough to read
        rows = page.locator("#arena-table table tbody tr")
        expect(rows).to_have_count(6)
        shown = [[c.strip() for c in rows.nth(i).locator("td").all_inner_texts()] for i in range(6)]
        for name in ("arena.json", "arena.csv", "arena.png", "strip.png"):
            expect(page.locator(f"#arena-files a[href$='/{name}']")).to_have_count(1)
        command = re.search(r"python -m training\.evaluate --arena .+? --out \S+",
                            page.locator("#arena-info").inner_text())[0]
    out = root / "cli"
    assert ev.main([*shlex.split(command)[3:-2], "--out", str(out), "--cache", str(root / "cache")]) == 0
    table = [line for line in (out / "arena.md").read_text().splitlines() if line.startswith("| ") and "---" not in
             line][1:]
    cli = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert [r[:-1] for r in shown] == [r[:-1] for r in cli]  # every column but the seconds
    assert shown[0][0] == "DDIM" and shown[3][0] == "UNIPC solver_order=2" and len(shown[0]) == 7


def screenshots(model: str, out: Path, compare_images: int = 4) -> list[Path]:
    """Screenshots of the tabs with the app's defaults (16 images DDIM 50; DDPM 1000 vs DDIM 50; Explore)."""
    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    from diffusion.machine import configure_threads

    configure_threads()  # CPU_CORES, or the cores this process may use
    demo, url = launch_studio(model, compile=True)
    paths = [
        out / "studio-sample.png",
        out / "studio-compare.png",
        out / "studio-denoising.png",
        out / "studio-explore-reconstruct.png",
        out / "studio-explore-interpolate.png",
    ]
    try:
        with sync_playwright() as p:
            browser = open_browser(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(15 * 60_000)
            page.goto(url)
            page.get_by_role("button", name="Generate").click()
            expect(page.get_by_text("model evaluations")).to_be_visible(timeout=15 * 60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=paths[0], full_page=True)
            page.get_by_role("tab", name="Denoising").click()
            expect(page.get_by_text("Downloads: GIF")).to_be_visible()
            expect(page.locator("#d_files [aria-label$='trajectory.npz']")).to_be_visible(timeout=15 * 60_000)
            page.locator("#d_frame input[type=number]").fill("20")
            page.locator("#d_frame input[type=number]").press("Enter")
            page.wait_for_timeout(2000)
            page.screenshot(path=paths[2], full_page=True)
            page.get_by_role("tab", name="Compare").click()
            slider_value(page, "c_n", compare_images)
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.get_by_text("Speed-up")).to_be_visible(timeout=15 * 60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=paths[1], full_page=True)
            page.get_by_role("tab", name="Explore").click()
            page.get_by_role("button", name="Interpolate", exact=True).click()
            expect(page.get_by_text("slerped between")).to_be_visible(timeout=15 * 60_000)
            page.get_by_role("tab", name="Invert and reconstruct").click()
            example = Path(__file__).resolve().parents[1] / "studio" / "examples" / "2-pullover-test1.png"
            page.locator("#r-image input[type=file]").set_input_files(str(example))  # a real test image
            page.get_by_role("button", name="Invert and reconstruct", exact=True).click()
            expect(page.get_by_text("per-dimension MSE")).to_be_visible(timeout=15 * 60_000)
            page.get_by_role("button", name="Error against steps (10, 20, 50, 100)").click()
            expect(page.get_by_role("columnheader", name="MSE per dimension")).to_be_visible(timeout=15 * 60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=paths[3], full_page=True)
            page.get_by_role("tab", name="Interpolate").click()
            page.wait_for_timeout(500)
            page.screenshot(path=paths[4], full_page=True)
            browser.close()
    finally:
        demo.close()
    return paths


def class_screenshot(out: Path) -> Path:
    """The Sample tab with the bundled class-conditional model: one of each class (a row per class, 6 images a
    row from the same x_T) at guidance 3, chosen by a link."""
    from playwright.sync_api import expect, sync_playwright

    from diffusion.machine import configure_threads

    configure_threads()
    demo, url = launch_studio(str(ROOT / "checkpoints" / "fashion-mnist"), compile=True)
    path = out / "studio-classes.png"
    try:
        with sync_playwright() as p:
            browser = open_browser(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(15 * 60_000)
            page.goto(f"{url}?model=checkpoints/fashion-mnist-cond&class=all&guidance=3&n=6")
            expect(page.locator("#s_class input")).to_have_value("One of each (a row per class)")
            page.get_by_role("button", name="Generate").click()
            expect(page.locator("#s-info")).to_contain_text("60 images · one of each class", timeout=15 * 60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=path, full_page=True)
            browser.close()
    finally:
        demo.close()
    return path


def arena_screenshot(out: Path) -> Path:
    """The Arena tab with the bundled model: DDIM, UniPC, DPM-Solver++ and DDPM at 5, 10 and 20 model evaluations,
    200 samples each (enough for the FD), chosen by a link."""
    import json
    import urllib.parse

    from playwright.sync_api import expect

    from diffusion.machine import configure_threads

    configure_threads()
    demo, url = launch_studio(str(ROOT / "checkpoints" / "fashion-mnist"), compile=True)
    path = out / "studio-arena.png"
    spec = {"contenders": ["ddim", "unipc", "dpm-solver++", "ddpm"], "budgets": [5, 10, 20], "n": 200, "seed": 0}
    try:
        with chromium_page(f"{url}?tab=arena&arena={urllib.parse.quote(json.dumps(spec))}") as page:
            page.get_by_role("button", name="Run the arena").click()
            expect(page.locator("#arena-info")).to_contain_text("12 rows", timeout=60 * 60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=path, full_page=True)
    finally:
        demo.close()
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Take the studio screenshots in docs/ with Chromium.")
    parser.add_argument("--model", default=os.environ.get("DEFAULT_MODEL", "checkpoints/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--compare-images", type=int, default=4)
    parser.add_argument("--classes-only", action="store_true",
                        help="only the class-conditional model's screenshot (docs/studio-classes.png)")
    parser.add_argument("--arena-only", action="store_true", help="only the Arena tab's (docs/studio-arena.png)")
    args = parser.parse_args()
    if args.arena_only:
        print(arena_screenshot(args.out))
    else:
        paths = [] if args.classes_only else [*screenshots(args.model, args.out, args.compare_images),
                                              arena_screenshot(args.out)]
        for path in [*paths, class_screenshot(args.out)]:
            print(path)
