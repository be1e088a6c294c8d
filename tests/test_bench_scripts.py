"""The benchmark scripts' machine-readable output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_solvers_json_is_the_last_line():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_solvers.py"), "--workloads", "mlp",
           "--solvers", "fixed_point_iter", "--repeats", "1", "--max-iter", "2",
           "--json"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=300)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(summary) == ["fixed_point_iter/mlp"]
    for cell in summary.values():
        assert set(cell) == {"ours_ms", "floor_ms", "limit_ms", "original_ms"}
        assert cell["original_ms"] is None  # no --reference
        assert 0 < cell["limit_ms"] and 0 < cell["floor_ms"] and 0 < cell["ours_ms"]
