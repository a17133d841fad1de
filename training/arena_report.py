"""What an arena's rows become: the plot (quality against model evaluations and against seconds, with bootstrap
error bars), the strip of each row's first images, the table as Markdown and CSV, and the verdict per budget."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch

from diffusion.files import atomic_write

from .arena import Arena, device_name

METRICS = {"rmse": "RMSE to the converged solution", "fd": "FD (classifier features)"}
CSV_FIELDS = ("name", "label", "sampler", "options", "budget", "steps", "model_evaluations", "stochastic", "n",
              "seconds", "seconds_per_1000", "rmse", "rmse_std", "fd", "fd_std", "is", "precision", "recall", "blank",
              "accuracy", "rmse_vs_best", "rmse_vs_best_std", "rmse_best_lower", "fd_vs_best", "fd_vs_best_std",
              "fd_best_lower")


def plot(arena: Arena, path: Path) -> Path:
    """Each metric (rows) against model evaluations and against seconds (columns), log-log, one line per
    contender (dashed: stochastic, which does not converge to the ODE's solution), bootstrap std as error bars."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if any(m in r for r in arena.rows)] or ["rmse"]
    fig, axes = plt.subplots(len(metrics), 2, figsize=(11, 3.6 * len(metrics) + 0.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, contender in enumerate(arena.spec.contenders):
        rows = [r for r in arena.rows if r["name"].rpartition("@")[0] == str(contender)]
        if not rows:
            continue
        dashed = any(r["stochastic"] for r in rows)
        for i, metric in enumerate(metrics):
            have = [r for r in rows if metric in r]
            for j, x in enumerate(("model_evaluations", "seconds")):
                axes[i][j].errorbar([r[x] for r in have], [r[metric] for r in have],
                                    yerr=[r[f"{metric}_std"] for r in have], marker="o", capsize=3,
                                    linestyle="--" if dashed else "-", color=colours[k % len(colours)],
                                    label=contender.label + (" (stochastic)" if dashed else ""))
    device = device_name(arena.pipe)
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for i, metric in enumerate(metrics):
        for j, x in enumerate(("model evaluations per sample", f"seconds for {arena.spec.n} samples ({device})")):
            ax = axes[i][j]
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):  # ticks at 1, 2, 5 x 10^k, written 0.05, not 5 x 10^-2
                axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(plain)
                axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if j == 0:
                ax.set_xticks(sorted({r["model_evaluations"] for r in arena.rows}))
            ax.set_xlabel(x)
            ax.set_ylabel(METRICS[metric] + " (lower is better)")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(4, len(handles)), frameon=False)
    fig.suptitle(f"{arena.spec.n} samples from the same noise (seed {arena.spec.seed}); error bars: bootstrap std",
                 y=0.005, va="bottom", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.93))
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return path


def strip(arena: Arena, path: Path, k: int = 8) -> Path:
    """The converged solution's first ``k`` images on top, then each row's first ``k`` from the same noises."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown: list[tuple[str, torch.Tensor]] = []
    if arena.reference_images is not None:
        shown.append(("converged (reference)", arena.reference_images[:k]))
    shown += [(f"{r['label']}\n{r['model_evaluations']} evaluations", arena.first_images[r["name"]][:k])
              for r in arena.rows]
    c, h, w = shown[0][1].shape[1:]
    fig, axes = plt.subplots(len(shown), 1, figsize=(1.1 * k + 2.4, 1.15 * len(shown)), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], shown):
        gap = torch.full((c, h, 2), 0.5)
        row = torch.cat([torch.cat([im, gap], 2) for im in images], 2)[:, :, :-2]
        ax.imshow(row.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if c == 1 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return path


def csv_text(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV (one line per row; options as ``key=value`` items; the comparison with the budget's best
    flattened)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = {**r, "options": " ".join(f"{k}={v}" for k, v in r["options"].items())}
        for metric in ("rmse", "fd"):
            vs = r.get(f"{metric}_vs_best")
            if vs:
                flat.update({f"{metric}_vs_best": vs["difference"], f"{metric}_vs_best_std": vs["std"],
                             f"{metric}_best_lower": vs["best_lower"]})
        writer.writerow(flat)
    return out.getvalue()


def _value(r: dict[str, Any], metric: str, digits: int) -> str:
    return f"{r[metric]:.{digits}f} ± {r[f'{metric}_std']:.{digits}f}" if metric in r else "-"


def markdown(arena: Arena) -> str:
    """The rows as a Markdown table, then which sampler is best at each budget and whether beyond the noise."""
    fd, pr = (any(m in r for r in arena.rows) for m in ("fd", "precision"))
    head = ("| sampler | evaluations | steps | RMSE ± std |" + (" FD ± std |" if fd else "")
            + (" precision | recall |" if pr else ""))
    lines = [head + " seconds |", "|" + "---|" + "---:|" * (head.count("|") - 2) + "---:|"]
    for r in arena.rows:
        cells = [r["label"] + (" (stochastic)" if r["stochastic"] else ""), str(r["model_evaluations"]),
                 str(r["steps"]), _value(r, "rmse", 4)]
        if fd:
            cells.append(_value(r, "fd", 3))
        if pr:
            cells += [f"{r['precision']:.3f}", f"{r['recall']:.3f}"]
        lines.append("| " + " | ".join([*cells, f"{r['seconds']:.2f}"]) + " |")
    return "\n".join(lines) + "\n\n" + verdicts(arena) + "\n"


def verdicts(arena: Arena) -> str:
    """One line per budget: the best row by FD (else RMSE), and whether it is ahead of every other beyond the
    noise (lower in at least 95% of the paired bootstrap's rounds)."""
    lines = []
    names = {r["name"]: r["label"] for r in arena.rows}
    for budget in arena.spec.budgets:
        for metric in ("fd", "rmse"):
            found = arena.best(budget, metric)
            if found is None:
                continue
            best, sure = found
            others = [r for r in arena.rows if r["budget"] == budget and r is not best and metric in r]
            if not others:
                break
            worst_share = min(r[f"{metric}_vs_best"]["best_lower"] for r in others)
            close = [names[r["name"]] for r in others if r[f"{metric}_vs_best"]["best_lower"] < 0.95]
            verdict = ("ahead of every other beyond the noise" if sure else
                       f"not beyond the noise against {', '.join(close)} (lower in {100 * worst_share:.0f}% of the "
                       "bootstrap rounds)")
            lines.append(f"- **{budget} evaluations**: lowest {METRICS[metric].split(' (')[0]}: "
                         f"{best['label']} ({best[metric]:.4g}), {verdict}.")
            break
    return "\n".join(lines)


def write(arena: Arena, model: str, out: Path) -> dict[str, Path]:
    """``arena.json`` (settings, reference, rows), ``arena.csv``, ``arena.md``, ``arena.png`` and ``strip.png`` in
    ``out``."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "arena.json", "csv": out / "arena.csv", "md": out / "arena.md"}
    atomic_write(files["json"], lambda p: p.write_text(json.dumps(arena.result(model), indent=1) + "\n"))
    atomic_write(files["csv"], lambda p: p.write_text(csv_text(arena.rows)))
    atomic_write(files["md"], lambda p: p.write_text(markdown(arena)))
    files["plot"] = plot(arena, out / "arena.png")
    files["strip"] = strip(arena, out / "strip.png")
    return files
