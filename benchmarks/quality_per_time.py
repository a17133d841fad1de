"""Quality per time: Frechet distance against sampling wall time, one line per sampler, from a table
written by ``python -m training.evaluate --table`` (every row's time was measured in that same run).

    python -m benchmarks.quality_per_time runs/eval/table/table.json --out runs/eval/quality-per-time.png

Prints, for each row, its time and FD as ratios against DDIM (eta 0) at 100 steps, the baseline the
fewer-evaluation samplers aim for (the same quality with 10 to 20 model evaluations).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BASELINE = "ddim-eta0-100"
COLORS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#000000",
    "#8fbc8f",
]


def family(row: dict) -> str:
    o = row["options"]
    if row["sampler"] == "ddpm":
        return f"DDPM {o['variance_type'].replace('_', '-')}"
    if row["sampler"] == "ddim":
        extra = (
            " (x0 not clipped)"
            if not o.get("clip_sample", True)
            else " (eps from clipped x0)"
            if o.get("use_clipped_model_output")
            else ""
        )
        return f"DDIM eta {o['eta']:g}{extra}"
    return {"dpm-solver++": "DPM-Solver++(2M)", "pndm": "PNDM", "euler": "Euler", "heun": "Heun"}.get(
        row["sampler"], row["sampler"]
    )


def plot(rows: list[dict], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(9.5, 4.8), dpi=110)
    families: dict[str, list[dict]] = {}
    for r in rows:
        families.setdefault(family(r), []).append(r)
    markers = "osD^v<>p*h"
    for i, (name, rs) in enumerate(families.items()):
        rs = sorted(rs, key=lambda r: r["seconds_per_1000"])
        ax.plot(
            [r["seconds_per_1000"] for r in rs],
            [r["fd"] for r in rs],
            marker=markers[i % len(markers)],
            label=name,
            color=COLORS[i % len(COLORS)],
            linestyle="-" if i < len(COLORS) else "--",
        )
        for r in rs:
            ax.annotate(str(r["model_evaluations"]), (r["seconds_per_1000"], r["fd"]), textcoords="offset points",
                        xytext=(4, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"seconds per 1000 samples ({rows[0]['device']}, batch {rows[0]['batch_size']})")
    ax.set_ylabel("Frechet distance (classifier features; lower is better)")
    ax.set_title("Quality per time on the bundled Fashion-MNIST model (labels: model evaluations)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", help="table.json from training.evaluate --table")
    p.add_argument("--out", default="runs/eval/quality-per-time.png")
    args = p.parse_args(argv)
    rows = [r for r in json.loads(Path(args.table).read_text()) if "fd" in r]
    if not rows:
        raise SystemExit(f"{args.table} has no scored rows.")
    base = next((r for r in rows if r["name"] == BASELINE), None)
    print(
        f"{'row':24s} {'NFE':>5s} {'FD':>8s} {'s/1000':>8s}" + (f" {'time/base':>9s} {'FD/base':>8s}" if base else "")
    )
    for r in sorted(rows, key=lambda r: r["seconds_per_1000"]):
        line = f"{r['name']:24s} {r['model_evaluations']:5d} {r['fd']:8.3f} {r['seconds_per_1000']:8.2f}"
        if base:
            line += f" {r['seconds_per_1000'] / base['seconds_per_1000']:9.2f} {r['fd'] / base['fd']:8.2f}"
        print(line)
    plot(rows, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
