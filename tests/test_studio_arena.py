"""The studio's Arena tab handler (studio/arena.py), driven without a server: its rows are the command line's
(``evaluate --arena`` with the command the result line shows), refusals say what to change, Stop keeps no
half-made reference, and the link round-trips the settings."""

from __future__ import annotations

import json
import re
import shlex
import urllib.parse
from pathlib import Path

import gradio as gr
import pytest

from studio.arena import ArenaRuns, link, read_spec
from studio.runs import stopped_note
from training import evaluate as ev
from training.arena import ArenaSpec, Contender

from conftest import SMALL_28, make_studio, write_diffusers_checkpoint


def no_progress(*args, **kwargs) -> None:
    return None


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("studio-arena") / "small28"
    write_diffusers_checkpoint(root, SMALL_28)
    return str(root)


@pytest.fixture(scope="module")
def runs(model, tmp_path_factory) -> ArenaRuns:
    return ArenaRuns(make_studio(model, arena_cache=str(tmp_path_factory.mktemp("cache"))))


def cache_of(runs: ArenaRuns) -> str:
    return runs.studio.settings.arena_cache


def test_the_tabs_rows_are_the_command_lines(runs, model, tmp_path):
    outs = list(runs.run(model, 3, 64, [2, 4], progress=no_progress, sampler_1="ddim", options_1="",
                         sampler_2="unipc", options_2="solver_order=2", sampler_3="", options_3="x"))
    assert outs[0][3] == "Arena: row 0 / 4 · starting"
    assert any(isinstance(o[3], str) and o[3].startswith("Arena: row 1 / 4 · reference") for o in outs)
    plot, strip, table, info, files = outs[-1]
    assert Path(plot).is_file() and Path(strip).is_file() and len(files) == 4
    assert table.count("\n| ") == 4 and "FD" not in table and "| precision | recall |" in table
    assert "**4 rows** · 64 samples each from seed 3" in info and "FD needs more than 128 samples" in info
    command = re.search(r"`(python -m training\.evaluate --arena [^`]+)`", info)[1]
    args = shlex.split(command)[3:]
    assert args[:2] == ["--arena", "ddim"] and "--batch-size" in args
    out = tmp_path / "cli"
    assert ev.main([*args[:-2], "--out", str(out), "--cache", cache_of(runs)]) == 0  # the studio's reference
    cli = json.loads((out / "arena.json").read_text())["rows"]
    page = json.loads(Path(files[0]).read_text())["rows"]
    assert [r["name"] for r in page] == ["ddim@2", "ddim@4", "unipc:solver_order=2@2", "unipc:solver_order=2@4"]
    timing = ("seconds", "seconds_per_1000")
    assert [{k: v for k, v in r.items() if k not in timing} for r in page] == [
        {k: v for k, v in r.items() if k not in timing} for r in cli]
    # the link fills the tab in again with the same settings
    query = urllib.parse.parse_qs(re.search(r"\[Link to this arena\]\(\?([^)]+)\)", info)[1])
    assert query["tab"] == ["arena"] and query["model"] == [model]
    assert ArenaSpec.from_dict(json.loads(query["arena"][0])) == read_spec(
        3, 64, [2, 4], [("ddim", ""), ("unipc", "solver_order=2")])


@pytest.mark.parametrize("values, message", [
    (dict(num_samples=63), "The number of samples must be from 64 to 1000; got 63"),
    (dict(evaluations=[]), "Tick at least one number of model evaluations"),
    (dict(sampler_1="", sampler_2=""), "Choose at least one sampler"),
    (dict(options_1="num_inference_steps=3"), "leave Steps out of ddim's options"),
    (dict(options_1="eta"), "Sampler options are key=value items"),
    (dict(options_1="eta=7"), "DDIM eta=7 at 2 model evaluations: eta must be between 0 and 1"),
    (dict(sampler_2="pndm", evaluations=[5]), "PNDM at 5 model evaluations: pndm cannot run on 5"),
])
def test_refusals_say_what_to_change(runs, model, values, message):
    kwargs = dict(seed=0, num_samples=64, evaluations=[2], sampler_1="ddim", options_1="", sampler_2="unipc",
                  options_2="")
    kwargs.update(values)
    gen = runs.run(model, progress=no_progress, **kwargs)
    said = next(gen)
    assert said[3].startswith("**Not run:**") and message in said[3], said[3]
    with pytest.raises(gr.Error, match=re.escape(message)):
        next(gen)
    gen.close()


def test_too_much_work_is_refused_before_sampling(model, tmp_path):
    runs = ArenaRuns(make_studio(model, arena_work=1_000_000, arena_cache=str(tmp_path)))
    said = next(runs.run(model, 0, 1000, [50, 100], progress=no_progress, sampler_1="ddim"))
    assert "above the arena's budget of 1,000,000" in said[3] and "the converged solution's 200 included" in said[3]
    assert "costs too much for the arena within this budget" in said[3]  # 64 samples of the reference alone: 10 M
    runs = ArenaRuns(make_studio(model, arena_work=20_000_000, arena_cache=str(tmp_path)))
    said = next(runs.run(model, 0, 1000, [50, 100], progress=no_progress, sampler_1="ddim"))
    assert "Use at most 72 samples, or fewer samplers" in said[3]  # 20 M // (784 pixels x 350 evaluations)
    assert not list(tmp_path.iterdir())


def test_stop_keeps_the_rows_and_no_half_made_reference(model, tmp_path):
    runs = ArenaRuns(make_studio(model, arena_cache=str(tmp_path)))
    gen = runs.run(model, 0, 64, [2], progress=no_progress, sampler_1="ddim")
    note = None
    for out in gen:
        if isinstance(out[3], str) and "reference" in out[3]:
            note = out[3]
            break
    gen.close()  # what Gradio's cancel does at a yield
    assert not list(tmp_path.iterdir())
    assert stopped_note(note).startswith("**Stopped** at row 1 of 1 (Arena). What shows above is the rows scored")


def test_link_encodes_the_spec():
    spec = ArenaSpec((Contender.parse("deis:solver_order=2"),), (5, 10), 100, seed=9, batch_size=100)
    q = urllib.parse.parse_qs(link("checkpoints/fashion-mnist", spec)[1:])
    assert ArenaSpec.from_dict(json.loads(q["arena"][0])) == spec
