"""The benchmark scripts' machine-readable output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_solvers  # noqa: E402


def test_bench_solvers_json_summary_has_every_cell_in_milliseconds():
    row = {"nfe": 30, "limit": 0.010, "solve": 0.012, "floor": 0.011}
    cases = [("anderson", "mlp"), ("broyden", "conv")]
    rows = {(who, case): [row, {**row, "solve": 0.020}] for who in ("ours", "original")
            for case in cases}  # fmt: skip
    summary = json_round_trip(bench_solvers.json_summary(rows, cases, with_original=True))
    assert sorted(summary) == ["anderson/mlp", "broyden/conv"]
    assert summary["anderson/mlp"] == {
        "ours_ms": 12.0, "floor_ms": 11.0, "limit_ms": 10.0, "original_ms": 12.0
    }  # fmt: skip
    alone = bench_solvers.json_summary(rows, cases, with_original=False)
    assert alone["broyden/conv"]["original_ms"] is None


def json_round_trip(obj):
    return json.loads(json.dumps(obj))


@pytest.mark.slow
def test_bench_solvers_json_is_the_last_line():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_solvers.py"), "--workloads", "mlp",
           "--solvers", "fixed_point_iter", "--repeats", "1", "--max-iter", "2", "--json"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=300)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(summary) == ["fixed_point_iter/mlp"]
    assert set(summary["fixed_point_iter/mlp"]) == {"ours_ms", "floor_ms", "limit_ms", "original_ms"}
