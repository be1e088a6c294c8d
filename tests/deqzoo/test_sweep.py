"""Sweeps: the summary of a multirun lists every job and the failed ones."""

from __future__ import annotations

from framework_toy import compose_config
from hydra.core.utils import JobReturn, JobStatus

from deqzoo.sweep import SweepSummary, read_summary


def test_framework_sweep_summary_lists_failed_jobs(tmp_path, caplog):
    summary = SweepSummary()
    for num, (status, value) in enumerate(
        [(JobStatus.COMPLETED, 0.5), (JobStatus.FAILED, ValueError("unknown core 'bogus'"))]
    ):
        hydra_overrides = [
            "hydra.mode=MULTIRUN",
            f"hydra.sweep.dir={tmp_path}",
            f"hydra.job.num={num}",
        ]
        cfg = compose_config(["project=toy", *hydra_overrides])
        ret = JobReturn(overrides=[f"deq.core=c{num}"], status=status, _return_value=value)
        summary.on_job_end(cfg, ret)
    with caplog.at_level("INFO"):
        summary.on_multirun_end(cfg)
    records = read_summary(tmp_path)
    assert [(r["status"], r["value"]) for r in records] == [("COMPLETED", 0.5), ("FAILED", None)]
    assert "bogus" in records[1]["error"]
    assert "2 job(s), 1 failed" in caplog.text and "deq.core=c1" in caplog.text
