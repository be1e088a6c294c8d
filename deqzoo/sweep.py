"""A Hydra callback that records the outcome of every job of a multirun.

Each job appends one JSON line to ``<sweep dir>/summary.jsonl`` (status, overrides, returned
metric or error), from whichever process or node runs it; at the end of the sweep the launching
process logs a table of all jobs and how many failed. A failed job is never hidden: its own
log holds the traceback, and Hydra re-raises the first failure after the sweep.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

__all__ = ["SweepSummary", "read_summary"]

log = logging.getLogger(__name__)

SUMMARY = "summary.jsonl"


def read_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Reads the job records of a multirun folder, in job order.

    Args:
        sweep_dir (str | Path): The multirun folder (``hydra.sweep.dir``).

    Returns:
        list[dict[str, Any]]: One record per finished job with keys ``num``, ``overrides``,
        ``status`` (``'COMPLETED'`` or ``'FAILED'``), ``value`` (the returned metric),
        ``error`` and ``dir`` (the job's run folder).

    Example:
        >>> read_summary("/nonexistent")
        []
    """
    path = Path(sweep_dir) / SUMMARY
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: r["num"])


class SweepSummary(Callback):
    """Writes ``summary.jsonl`` in a multirun folder and logs it when the sweep ends.

    Example:
        In ``conf/hydra/default.yaml``::

            callbacks:
              sweep_summary:
                _target_: deqzoo.sweep.SweepSummary
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return
        ok = job_return.status == JobStatus.COMPLETED
        value = job_return._return_value if ok else None
        record = {
            "num": hydra_cfg.job.num,
            "overrides": list(job_return.overrides or []),
            "status": job_return.status.name,
            "value": value if isinstance(value, int | float) or value is None else str(value),
            "error": None if ok else repr(job_return._return_value),
            "dir": OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None),
        }
        # One short line per job: appends from parallel workers do not interleave.
        with open(Path(hydra_cfg.sweep.dir) / SUMMARY, "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        records = read_summary(config.hydra.sweep.dir)
        failed = [r for r in records if r["status"] != "COMPLETED"]
        lines = [f"sweep finished: {len(records)} job(s), {len(failed)} failed"]
        for r in records:
            outcome = r["value"] if r["status"] == "COMPLETED" else r["error"]
            lines.append(f"  #{r['num']} {r['status']:<9} {' '.join(r['overrides'])} -> {outcome}")
        (log.error if failed else log.info)("\n".join(lines))
