"""The README's sampler table: its rows (DDPM and DDIM at the papers' step counts, the faster samplers at equal
model evaluations), a resumable run over them, and the table as Markdown."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from diffusion.files import atomic_write
from diffusion.pipeline import DiffusionPipeline

from .generation import dist_rank, evaluate, steps_for_evaluations
from .scoring import Scorer


@dataclass(frozen=True)
class Row:
    name: str
    sampler: str
    options: dict[str, Any]
    long: bool = False  # 1000-step rows: fewer samples (--n-long)
    evaluations: int | None = None  # NFE-matched rows: the steps are solved for this budget


def table_rows() -> list[Row]:
    """The README table: DDPM (both variances) and DDIM (eta 0, 1) at 1000/100/50/20/10 steps (Ho et al. 2020,
    Table 1; Song et al. 2021, Table 1), then the fewer-evaluation samplers at 10, 20 and 50 evaluations."""
    rows = []
    for steps in (1000, 100, 50, 20, 10):
        for var in ("fixed_large", "fixed_small"):
            rows.append(
                Row(f"ddpm-{var}-{steps}", "ddpm", {"num_inference_steps": steps, "variance_type": var}, steps == 1000)
            )
        for eta in (0.0, 1.0):
            rows.append(
                Row(f"ddim-eta{eta:g}-{steps}", "ddim", {"num_inference_steps": steps, "eta": eta}, steps == 1000)
            )
    for sampler in ("dpm-solver++", "unipc", "deis", "pndm", "euler", "heun"):
        for nfe in (10, 20, 50):
            # PNDM as PLMS (skip_prk_steps): its Runge-Kutta warm-up alone spends 12 evaluations.
            options = {"skip_prk_steps": True} if sampler == "pndm" else {}
            rows.append(Row(f"{sampler}-nfe{nfe}", sampler, options, False, nfe))
    # What most users pick first: DPM++ 2M Karras, DPM++ 2M SDE Karras, Euler a.
    karras = {"use_karras_sigmas": True}
    for name, sampler, options in (
        ("dpm-solver++-karras", "dpm-solver++", karras),
        ("dpm-solver++-sde-karras", "dpm-solver++", {**karras, "algorithm_type": "sde-dpmsolver++"}),
        ("euler-ancestral", "euler-ancestral", {}),
    ):
        for nfe in (10, 20):
            rows.append(Row(f"{name}-nfe{nfe}", sampler, options, False, nfe))
    return rows


def run_table(
    pipe: DiffusionPipeline,
    scorer: Scorer,
    out: Path,
    n_long: int,
    n_short: int,
    batch_size: int,
    seed: int,
    only: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    save: Literal["npz", "png", "none"] = "none",
) -> list[dict[str, Any]]:
    """Every row of :func:`table_rows` (or those named in ``only``, by row or sampler name), appended to
    ``out/table.json`` as each finishes; rows already there are kept, so an interrupted run resumes.
    Each row's samples go to ``out/ROW`` (``save``), to be scored again with ``--score``."""
    path = out / "table.json"
    done = json.loads(path.read_text()) if path.is_file() else []
    have = {r["name"] for r in done}
    rank, _ = dist_rank()
    order = {r.name: i for i, r in enumerate(table_rows())}
    # Cheapest rows first: an interrupted run has the most rows done.
    for row in sorted(
        table_rows(),
        key=lambda r: (n_long if r.long else n_short) * (r.evaluations or r.options["num_inference_steps"]),
    ):
        if row.name in have or (only and row.name not in only and row.sampler not in only):
            continue
        options = {**row.options, **(overrides or {})}
        if row.evaluations:
            options["num_inference_steps"] = steps_for_evaluations(pipe, row.sampler, row.evaluations, **row.options)
        opts = pipe.sampler_options(row.sampler, **options)
        n = n_long if row.long else n_short
        result = evaluate(pipe, scorer, row.sampler, opts, n, batch_size, seed, out / row.name, save)
        if rank == 0 and result is not None:
            done = sorted([*done, {"name": row.name, **result}], key=lambda r: order.get(r["name"], len(order)))
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda p: p.write_text(json.dumps(done, indent=1) + "\n"))
            print(
                f"{row.name}: n={n} NFE={result['model_evaluations']} FD={result.get('fd')} IS={result.get('is')} "
                f"precision={result.get('precision')} recall={result.get('recall')} blank={result.get('blank')} "
                f"({result['seconds']} s)",
                flush=True,
            )
    return done


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The table as README markdown: sampler, steps, NFE, FD, IS, precision, recall, blank images, N, wall
    time per 1000 samples."""
    kind = "Inception" if rows and rows[0].get("metric", "").startswith("FID") else "classifier"
    lines = [
        f"| sampler | setting | steps | NFE | FD ({kind}) | IS ({kind}) | precision | recall | blank | N "
        "| s / 1000 samples |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        o = r["options"]
        setting = {"ddpm": o.get("variance_type", ""), "ddim": f"eta {o.get('eta', 0):g}"}.get(r["sampler"], "")
        if r["sampler"] == "ddim" and not o.get("clip_sample", True):
            setting += ", x0 not clipped"
        elif r["sampler"] == "ddim" and o.get("use_clipped_model_output"):
            setting += ", eps from clipped x0"
        if r["sampler"] == "pndm":
            setting = "PLMS" if o.get("skip_prk_steps") else "PRK warm-up + PLMS"
        if r["sampler"] == "dpm-solver++":
            setting = ", ".join(["SDE" if o.get("algorithm_type") == "sde-dpmsolver++" else "2M"]
                                + (["Karras sigmas"] if o.get("use_karras_sigmas") else []))
        lines.append(
            f"| {r['sampler']} | {setting} | {o['num_inference_steps']} | {r['model_evaluations']} | "
            f"{r.get('fd', float('nan')):.3f} | {r.get('is', float('nan')):.2f} | "
            f"{r.get('precision', float('nan')):.3f} | "
            f"{r.get('recall', float('nan')):.3f} | {_percent(r.get('blank'))} | {r['n']:,} | "
            f"{r['seconds_per_1000']:.2f} |"
        )
    return "\n".join(lines) + "\n"


GUIDANCE_SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 7.5)  # the original's table (0, 1, 3, 5) and the steps between


def run_guidance_table(pipe: DiffusionPipeline, scorer: Scorer, out: Path, sampler: str, options: Any, n: int,
                       batch_size: int, seed: int, scales: tuple[float, ...] = GUIDANCE_SCALES,
                       rounds: int = 200) -> list[dict[str, Any]]:
    """A class-conditional model at each guidance scale (Ho and Salimans 2022, Table 1's sweep), every row from
    the same noise and the same classes (sample i of class i mod k), samples kept in ``out/guidance-S``; then
    each row's FD against the guidance-1 row's by the paired bootstrap. ``out/guidance.json`` is rewritten as
    each row finishes; rows already there are kept (an interrupted run resumes)."""
    if not pipe.class_conditional:
        raise ValueError("The guidance table needs a class-conditional model (one with classes.json).")
    path = out / "guidance.json"
    done = json.loads(path.read_text()) if path.is_file() else []
    have = {r["guidance_scale"] for r in done}
    for scale in scales:
        if scale in have:
            continue
        row = evaluate(pipe, scorer, sampler, options, n, batch_size, seed, out / f"guidance-{scale:g}", "npz",
                       guidance_scale=scale)
        if row is None:
            continue
        done = sorted([*done, {"name": f"guidance-{scale:g}", **row}], key=lambda r: r["guidance_scale"])
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: p.write_text(json.dumps(done, indent=1) + "\n"))
        print(f"guidance {scale:g}: FD={row.get('fd')} IS={row.get('is')} precision={row.get('precision')} "
              f"recall={row.get('recall')} accuracy={row.get('accuracy')} ({row['seconds']} s)", flush=True)
    if scorer.metric == "classifier" and any(r["guidance_scale"] == 1.0 for r in done):
        done = [{**r, **paired_against(scorer, out, r, 1.0, rounds)} for r in done]
        atomic_write(path, lambda p: p.write_text(json.dumps(done, indent=1) + "\n"))
    return done


def paired_against(scorer: Scorer, out: Path, row: dict[str, Any], base: float, rounds: int) -> dict[str, Any]:
    """The paired bootstrap of ``row``'s FD minus the guidance-``base`` row's (the same noise and classes)."""
    if row["guidance_scale"] == base:
        return {}
    from . import classifier as clf
    from .metrics import frechet_difference
    from .scoring import read_samples_npz

    model, reference, _ = scorer.classifier_reference(features=False)
    fa, fb = (clf.extract(model, read_samples_npz(out / f"guidance-{s:g}" / "samples.npz"))[0]
              for s in (row["guidance_scale"], base))
    d = frechet_difference(fa, fb, reference["mu"], reference["sigma"], rounds)
    return {"vs_guidance_1": {"difference": round(d["difference"], 4), "std": round(d["std"], 4),
                              "p_lower": round(d["p_a_lower"], 3), "rounds": rounds}}


def guidance_markdown(rows: list[dict[str, Any]]) -> str:
    """The guidance sweep as Markdown: FD, IS, precision, recall, accuracy on the asked class, and the FD
    difference to guidance 1 with its bootstrap spread."""
    lines = ["| guidance s | FD | IS | precision | recall | accuracy | FD - FD(s = 1) | N | s / 1000 samples |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        vs = r.get("vs_guidance_1")
        gap = "-" if not vs else f"{vs['difference']:+.2f} ± {vs['std']:.2f}"
        lines.append(
            f"| {r['guidance_scale']:g} | {r.get('fd', float('nan')):.3f} | {r.get('is', float('nan')):.2f} | "
            f"{r.get('precision', float('nan')):.3f} | {r.get('recall', float('nan')):.3f} | "
            f"{_percent(r.get('accuracy'))} | {gap} | {r['n']:,} | {r['seconds_per_1000']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"
