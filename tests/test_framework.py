"""The training framework end to end on a toy DEQ: group choices reach the built model,
runs train, test, checkpoint, evaluate and sweep, and the DEQ callbacks do their jobs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))

from framework_toy import ROOT, compose_config, run_train_py  # noqa: E402

import deqzoo.callbacks  # noqa: E402
from deqzoo.callbacks import DEQReset, DEQStats  # noqa: E402
from deqzoo.sweep import SweepSummary, read_summary  # noqa: E402
from deqzoo.train import train  # noqa: E402
from torchdeq.dropout import VariationalDropout  # noqa: E402
from torchdeq.solver import get_solver  # noqa: E402

SOLVERS = sorted(p.stem for p in (ROOT / "conf" / "solver").glob("*.yaml"))


def _model(*overrides):
    torch.manual_seed(0)
    return hydra.utils.instantiate(compose_config(["project=toy", *overrides]).model)


def _metrics(folder) -> dict:
    return json.loads((Path(folder) / "metrics.json").read_text())


@pytest.mark.parametrize("solver", SOLVERS)
def test_framework_solver_option_builds_that_solver(solver):
    cfg = compose_config(["project=toy", f"solver={solver}"])
    deq = hydra.utils.instantiate(cfg.model).net.deq
    assert deq.f_solver is get_solver(solver)
    assert deq.b_solver_name == solver
    assert deq.f_solver_kwargs == dict(cfg.deq.f_solver_kwargs)


@pytest.mark.parametrize(
    "grad,expected",
    [("one_step", (False, False, [1], 1.0)), ("ift", (True, False, [1], 1.0)),
     ("hook_ift", (True, True, [1], 1.0)), ("phantom", (False, False, [5], 0.7))],
)  # fmt: skip
def test_framework_grad_option_sets_the_backward(grad, expected):
    deq = _model(f"grad={grad}").net.deq
    assert (deq.ift, deq.hook_ift, deq.grad, deq.tau) == expected


def test_framework_norm_option_changes_the_parametrisation():
    keys = {
        n: set(_model(f"norm={n}").net.state_dict())
        for n in ("none", "weight_norm", "spectral_norm")
    }
    assert keys["none"] == {f"{m}.{p}" for m in ("inject", "head") for p in ("weight", "bias")} | {
        "cell.weight"
    }
    assert keys["weight_norm"] != keys["none"] and keys["spectral_norm"] != keys["none"]
    assert keys["weight_norm"] != keys["spectral_norm"]


def test_framework_dropout_option_adds_variational_dropout():
    def dropouts(option):
        net = _model(f"dropout={option}").net
        return [m for m in net.modules() if isinstance(m, VariationalDropout)]

    assert dropouts("none") == []
    assert len(dropouts("variational")) == 1


def test_framework_deq_override_limits_the_solver():
    model = _model("deq.f_max_iter=3", "deq.f_tol=1e-12")
    model.train()
    model(torch.randn(5, 1, 8, 8))
    assert model.deq_info["nstep"].max().item() <= 3
    assert model.deq_info["abs_trace"].shape == (5, 3)


def test_framework_fast_dev_run_trains_tests_and_writes_metrics(tmp_path):
    cfg = compose_config(["project=toy", "debug=fdr"], tmp_path)
    value = train(cfg)
    metrics = _metrics(tmp_path)
    assert value == pytest.approx(metrics["val/acc"])
    for name in ("train/loss", "val/acc", "test/acc", "test/nstep", "test/abs_residual"):
        assert name in metrics
    assert 1 <= metrics["test/nstep"] <= metrics["test/nstep_max"] <= 12


def test_framework_run_checkpoints_and_eval_reproduces_test_metrics(tmp_path):
    run = tmp_path / "run"
    cfg = compose_config(["project=toy", "debug=tiny", "callbacks=[default,sradius]"], run)
    value = train(cfg)
    metrics = _metrics(run)
    best = [p for p in (run / "checkpoints").glob("epoch_*.ckpt")]
    assert len(best) == 1 and (run / "checkpoints" / "last.ckpt").is_file()
    assert value == pytest.approx(max(_val_accs(run)))
    assert metrics["val/nstep_max"] >= metrics["val/nstep"] >= 1
    assert 0 < metrics["val/sradius"] < 10
    assert 0 <= metrics["val/converged"] <= 1

    evaluation = tmp_path / "eval"
    cfg = compose_config(["project=toy", "train=false", f"ckpt_path={best[0]}"], evaluation)
    train(cfg)
    again = _metrics(evaluation)
    assert set(again) == {k for k in metrics if k.startswith("test/")}
    assert again["test/acc"] == metrics["test/acc"]
    assert again["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)


def _val_accs(run: Path) -> list[float]:
    lines = (next(run.glob("csv/version_*")) / "metrics.csv").read_text().splitlines()
    column = lines[0].split(",").index("val/acc")
    return [float(row.split(",")[column]) for row in lines[1:] if row.split(",")[column]]


def test_framework_eval_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="ckpt_path"):
        train(compose_config(["project=toy", "train=false"], tmp_path))


def test_framework_deq_reset_runs_before_every_training_step(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(deqzoo.callbacks, "reset_norm", lambda m: events.append("norm"))
    monkeypatch.setattr(deqzoo.callbacks, "reset_dropout", lambda m: events.append("dropout"))
    cfg = compose_config(["project=toy", "debug=tiny", "trainer.max_epochs=1"], tmp_path)
    with open_dict(cfg):
        cfg.test = False
    model_step = hydra.utils.get_class(cfg.model._target_).model_step

    def spy(self, batch, stage):
        events.append(stage)
        return model_step(self, batch, stage)

    monkeypatch.setattr(hydra.utils.get_class(cfg.model._target_), "model_step", spy)
    train(cfg)
    # 4 training batches, each after a reset of norms and masks; validation after a norm reset.
    assert events == ["norm", "dropout", "train"] * 4 + ["norm", "val", "val"]


def test_framework_deq_stats_summarise_known_values():
    info = {
        "nstep": torch.tensor([2, 6, 4]),
        "abs_lowest": torch.tensor([0.1, 0.2, 0.6]),
        "rel_lowest": torch.tensor([0.01, 0.02, 0.03]),
        "nonfinite": torch.tensor([False, True, False]),
        "converged": torch.tensor([True, False, False]),
    }
    got = {k: (round(float(v), 6), fx) for k, (v, fx) in DEQStats.summarise(info).items()}
    assert got == {
        "nstep": (4.0, "mean"),
        "nstep_max": (6.0, "max"),
        "abs_residual": (0.3, "mean"),
        "rel_residual": (0.02, "mean"),
        "nonfinite": (round(1 / 3, 6), "mean"),
        "converged": (round(1 / 3, 6), "mean"),
    }
    # simple_fixed_point_iter reports -1: nothing to log.
    assert DEQStats.summarise({"nstep": -torch.ones(1, 1)}) == {}


def test_framework_deq_reset_redraws_dropout_masks():
    torch.manual_seed(0)
    module = L.LightningModule()
    module.drop = VariationalDropout(0.5)
    module.train()
    x = torch.ones(4, 32)
    first = module.drop(x)
    assert torch.equal(module.drop(x), first)  # one mask across solver steps
    DEQReset().on_train_batch_start(None, module, None, 0)
    assert not torch.equal(module.drop(x), first)


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


def test_framework_multirun_2x2_sweeps_solvers_and_gradients(tmp_path):
    result = run_train_py(
        ["-m", "project=toy", "solver=anderson,broyden", "grad=ift,phantom", "debug=fdr",
         f"hydra.sweep.dir={tmp_path}"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_summary(tmp_path)
    assert [r["status"] for r in records] == ["COMPLETED"] * 4
    folders = sorted(p.name for p in tmp_path.iterdir() if (p / "metrics.json").is_file())
    assert folders == [
        f"grad={g},solver={s}" for g in ("ift", "phantom") for s in ("anderson", "broyden")
    ]
    assert sorted(Path(r["dir"]).name for r in records) == folders


@pytest.mark.slow
def test_framework_ddp_on_cpu_with_gloo(tmp_path):
    result = run_train_py(
        ["project=toy", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
         "debug=tiny", f"hydra.run.dir={tmp_path}"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gloo" in result.stderr + result.stdout
    metrics = _metrics(tmp_path)
    assert "test/acc" in metrics and (tmp_path / "checkpoints" / "last.ckpt").is_file()
