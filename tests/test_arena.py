"""The sampler arena (training/arena.py, arena_report.py, ``evaluate --arena``): its rows equal what the rest of
evaluation computes on the same noise, the converged solution is the reference sampler's run and is cached per
model and noise, the bootstrap is frechet_difference's, and bad settings are refused before any sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion import load
from diffusion.images import to_uint8, to_unit
from training import arena_report, generation
from training import classifier as clf
from training import evaluate as ev
from training.arena import REFERENCE, Arena, ArenaSpec, Contender, Tick
from training.metrics import frechet_difference
from training.scoring import DEFAULT_CLASSIFIER, Scorer

from conftest import SMALL_28, write_diffusers_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("arena") / "model"
    write_diffusers_checkpoint(root, SMALL_28, layout="subfolder")
    return str(root)


def rows_of(arena: Arena) -> list[dict]:
    return [e for e in arena.run() if not isinstance(e, Tick)]


def test_contenders_and_settings_are_checked_before_sampling(model):
    assert str(Contender.parse("unipc:solver_order=3:solver_type=bh1")) == "unipc:solver_order=3:solver_type=bh1"
    assert Contender.of("deis", "solver_order=2, timestep_spacing=trailing").options == (
        ("solver_order", "2"), ("timestep_spacing", "trailing"))
    with pytest.raises(ValueError, match="Unknown sampler 'nope'"):
        Contender.parse("nope")
    with pytest.raises(ValueError, match="key=value"):
        Contender.parse("ddim:eta")
    with pytest.raises(ValueError, match="leave num_inference_steps out"):
        Contender.parse("ddim:num_inference_steps=10")
    with pytest.raises(ValueError, match="given twice"):
        Contender.parse("ddim:eta=0:eta=1")
    ddim = (Contender("ddim"),)
    with pytest.raises(ValueError, match="1 to 4 samplers"):
        ArenaSpec(tuple(Contender(s) for s in ("ddim", "ddpm", "unipc", "deis", "pndm")), (10,), 64)
    with pytest.raises(ValueError, match="chosen twice"):
        ArenaSpec(ddim * 2, (10,), 64)
    with pytest.raises(ValueError, match="from 1 to 1000"):
        ArenaSpec(ddim, (0, 10), 64)
    with pytest.raises(ValueError, match="number of samples"):
        ArenaSpec(ddim, (10,), 2)
    assert ArenaSpec(ddim, (20, 5, 20), 64).budgets == (5, 20)
    spec = ArenaSpec((Contender.parse("unipc:solver_order=3"), Contender("ddim")), (5, 10), 64, seed=3)
    assert ArenaSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="Unknown arena settings: colour"):
        ArenaSpec.from_dict({**spec.to_dict(), "colour": 1})
    pipe = load(model)
    with pytest.raises(ValueError, match=r"DDIM eta=2 at 5 model evaluations: .*eta"):
        Arena(pipe, ArenaSpec((Contender.parse("ddim:eta=2"),), (5,), 8))
    with pytest.raises(ValueError, match="PNDM at 5 model evaluations: pndm cannot run on 5 model evaluations"):
        Arena(pipe, ArenaSpec((Contender("pndm"),), (5,), 8))  # its Runge-Kutta warm-up alone spends 12


def test_reference_is_the_reference_samplers_run_and_is_cached(model, tmp_path):
    pipe = load(model)
    spec = ArenaSpec((Contender("ddim"), Contender.parse(str(REFERENCE))), (3, 12), n=6, seed=4, batch_size=4,
                     reference_steps=12)
    arena = Arena(pipe, spec, None, tmp_path)
    assert arena.work() == 3 + 12 + 3 + 12 + 12  # every row, and the reference (not cached yet)
    rows = rows_of(arena)
    # The converged solution: UniPC order 3, trailing, from each batch's noise (seed + b), as BatchSampler draws it
    options = pipe.sampler_options("unipc", solver_order=3, timestep_spacing="trailing", num_inference_steps=12)
    images = []
    for b, size in ((0, 4), (1, 2)):
        g = torch.Generator().manual_seed(4 + b)
        x = torch.randn((size, *pipe.image_shape), generator=g)
        *_, last = pipe.denoise("unipc", noise=x, generator=g, options=options)
        images.append(to_unit(last.x_prev))
    reference = torch.cat(images)
    assert torch.equal(arena.reference_images, reference)
    # RMSE in [0, 1] image units over all samples; the reference sampler at its own steps scores exactly 0
    ddim = generation.BatchSampler(pipe, "ddim", pipe.sampler_options("ddim", num_inference_steps=3), 6, 4, 4)
    finals = torch.cat([to_unit(s.x_prev) for _, s, last in ddim if last])
    assert rows[0]["rmse"] == pytest.approx(float((finals - reference).pow(2).mean().sqrt()), abs=1e-6)
    same = [r for r in rows if r["budget"] == 12 and r["sampler"] == "unipc"][0]
    assert same["rmse"] == 0 and same["rmse_std"] == 0
    ddim12 = rows[1]
    assert ddim12["name"] == "ddim@12" and ddim12["rmse_vs_best"]["best"] == same["name"]
    assert ddim12["rmse_vs_best"]["best_lower"] == 1.0 and same["rmse_vs_best"] is None
    assert not rows[0]["stochastic"] and rows[0]["model_evaluations"] == 3
    # A second arena on the same model and noise reads the cache: no reference work, the same rows
    again = Arena(pipe, spec, None, tmp_path)
    assert again.reference_cached() and again.work() == 30
    assert [{**r, "seconds": 0, "seconds_per_1000": 0} for r in rows_of(again)] == [
        {**r, "seconds": 0, "seconds_per_1000": 0} for r in rows]
    # ...which depends on the weights and the noise
    other_seed = Arena(pipe, ArenaSpec(spec.contenders, spec.budgets, 6, seed=5, batch_size=4, reference_steps=12),
                       None, tmp_path)
    assert not other_seed.reference_cached()
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(1e-3)
    changed = Arena(pipe, spec, None, tmp_path)
    assert changed.reference_key != arena.reference_key and not changed.reference_cached()


def test_a_stopped_arena_caches_no_reference(model, tmp_path):
    arena = Arena(load(model), ArenaSpec((Contender("ddim"),), (2,), 4, reference_steps=20), None, tmp_path)
    run = arena.run()
    assert isinstance(next(run), Tick)
    run.close()
    assert not list(tmp_path.iterdir())


def test_fd_and_its_paired_bootstrap_equal_evaluate_and_compare(model):
    """With the classifier metric: each row's FD, precision and recall are ``evaluate``'s for the same noise, and
    the comparison with the budget's best is ``frechet_difference`` on the two rows' samples (the same draws)."""
    pipe = load(model)
    scorer = Scorer("classifier", "", DEFAULT_CLASSIFIER)
    spec = ArenaSpec((Contender("ddim"), Contender("ddpm")), (2,), n=130, batch_size=65, rounds=20,
                     reference_steps=10)
    arena = Arena(pipe, spec, scorer)
    ddim, ddpm = rows_of(arena)
    assert ddpm["stochastic"] and not ddim["stochastic"]
    samples = {}
    for row in (ddim, ddpm):
        opts = pipe.sampler_options(row["sampler"], num_inference_steps=2)
        expected = generation.evaluate(pipe, scorer, row["sampler"], opts, 130, 65, 0, progress=False)
        for key in ("fd", "is", "precision", "recall", "blank"):
            assert row[key] == expected[key], key
        shards, _ = generation.generate(pipe, row["sampler"], opts, 130, 65, 0, progress=False)
        samples[row["sampler"]] = torch.from_numpy(np.concatenate([shards[b] for b in sorted(shards)])).permute(
            0, 3, 1, 2)
    worse, best = (ddim, ddpm) if ddim["fd"] > ddpm["fd"] else (ddpm, ddim)
    assert best["fd_vs_best"] is None
    model_, reference, _ = scorer.classifier_reference(features=False)
    fa, fb = (clf.extract(model_, samples[r["sampler"]])[0] for r in (worse, best))
    d = frechet_difference(fa, fb, reference["mu"], reference["sigma"], rounds=20)
    assert worse["fd_vs_best"]["std"] == pytest.approx(d["std"], abs=1e-6)
    assert worse["fd_vs_best"]["best_lower"] == pytest.approx(d["p_b_lower"], abs=1e-3)
    assert worse["fd_vs_best"]["difference"] == pytest.approx(d["difference"], abs=1e-3)
    # the report: a table with the FD column, the verdict, CSV with one line per row
    md = arena_report.markdown(arena)
    assert "| FD ± std |" in md and "**2 evaluations**: lowest FD:" in md
    assert arena_report.csv_text(arena.rows).count("\n") == 3


def test_small_sets_get_no_fd_but_the_rest(model):
    arena = Arena(load(model), ArenaSpec((Contender("ddim"),), (2,), 16, reference_steps=10),
                  Scorer("classifier", "", DEFAULT_CLASSIFIER))
    (row,) = rows_of(arena)
    assert "fd" not in row and {"rmse", "precision", "recall", "is"} <= set(row)
    assert "FD" not in arena_report.markdown(arena)


def test_evaluate_arena_writes_plot_table_and_files(model, tmp_path, capsys):
    out = tmp_path / "out"
    code = ev.main(["--arena", "ddim", "unipc:solver_order=2", "--evaluations", "2", "4", "--model", model,
                    "-n", "12", "--batch-size", "6", "--reference-steps", "10", "--cache", str(tmp_path / "cache"),
                    "--out", str(out)])
    assert code == 0
    result = json.loads((out / "arena.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["ddim@2", "ddim@4", "unipc:solver_order=2@2",
                                                   "unipc:solver_order=2@4"]
    assert result["spec"]["contenders"] == ["ddim", "unipc:solver_order=2"]
    assert result["command"].startswith("python -m training.evaluate --arena ddim unipc:solver_order=2 "
                                        "--evaluations 2 4")
    for name in ("arena.csv", "arena.md", "arena.png", "strip.png"):
        assert (out / name).stat().st_size > 100
    from PIL import Image

    assert Image.open(out / "arena.png").size[0] >= 1000
    assert "| DDIM | 2 | 2 |" in capsys.readouterr().out
    assert ev.main(["--arena", "ddim:steps=3", "--model", model, "--out", str(out)]) == 2
    assert "Sampler 'ddim' has no option 'steps'" in capsys.readouterr().err


def test_report_of_an_rgb_model_has_rmse_only(tmp_path):
    root = tmp_path / "rgb"
    write_diffusers_checkpoint(root, {**SMALL_28, "in_channels": 3, "out_channels": 3, "sample_size": 16})
    arena = Arena(load(str(root)), ArenaSpec((Contender("ddim"),), (2, 3), 4, reference_steps=10),
                  Scorer("classifier", "", DEFAULT_CLASSIFIER))
    rows = rows_of(arena)
    assert arena.scorer is None and all("precision" not in r for r in rows)
    paths = arena_report.write(arena, str(root), tmp_path / "out")
    assert to_uint8(arena.first_images["ddim@2"]).shape == (4, 16, 16, 3)
    assert Path(paths["plot"]).is_file() and Path(paths["strip"]).is_file()
