"""Puts the PSNR-against-time curves of several runs in one plot and one table.

Each run folder holds ``psnr_curve.csv`` (and ``inr_summary.json``), written by
the callbacks of :mod:`projects.deq_inr.callbacks`::

    python -m projects.deq_inr.compare logs/deq_inr/runs/A logs/deq_inr/runs/B \\
        --labels DEQ explicit --out psnr_vs_time.png
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path

from projects.deq_inr.callbacks import CURVE_CSV, SUMMARY
from projects.deq_inr.render import plot_psnr_curves

__all__ = ["main", "read_curve", "psnr_at"]


def read_curve(run: str | Path) -> list[tuple[float, int, float]]:
    """``(seconds, step, psnr)`` rows of a run folder's ``psnr_curve.csv``."""
    with open(Path(run) / CURVE_CSV, newline="") as f:
        return [(float(r["seconds"]), int(r["step"]), float(r["psnr"])) for r in csv.DictReader(f)]


def psnr_at(curve: Sequence[tuple[float, int, float]], seconds: float) -> float | None:
    """The last PSNR measured at or before ``seconds`` (None if none was).

    Example:
        >>> psnr_at([(10.0, 5, 20.0), (20.0, 9, 25.0)], 15)
        20.0
    """
    before = [p for s, _, p in curve if s <= seconds]
    return before[-1] if before else None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m projects.deq_inr.compare", description=__doc__)
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.add_argument("--labels", nargs="*", help="one label per run (default: folder names)")
    parser.add_argument("--out", default="psnr_vs_time.png", help="the PNG to write")
    parser.add_argument("--target", type=float, default=30.0, help="a reference line (dB)")
    parser.add_argument("--at", type=float, nargs="*", default=[60, 120, 300, 600], help="seconds")
    args = parser.parse_args(argv)
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(labels)} labels for {len(args.runs)} runs")
    curves = {label: read_curve(run) for label, run in zip(labels, args.runs)}
    plot_psnr_curves(
        {k: [(s, p) for s, _, p in v] for k, v in curves.items()}, args.out, target=args.target
    )
    print("| run | params | steps | " + " | ".join(f"PSNR @ {t:g} s" for t in args.at) + " |")
    print("|---" * (3 + len(args.at)) + "|")
    for (label, curve), run in zip(curves.items(), args.runs):
        summary_file = Path(run) / SUMMARY
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        values = [psnr_at(curve, t) for t in args.at]
        cells = ["-" if v is None else f"{v:.2f}" for v in values]
        params = summary.get("parameters")
        row = [label, f"{params:,}" if params else "-", str(curve[-1][1] if curve else "-")]
        print("| " + " | ".join(row + cells) + " |")
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
