"""The training recipe end to end on a toy DEQ: group choices reach the built model, runs
train, test, checkpoint, evaluate, sweep (2x2 multirun) and run under DDP."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytest
import torch
from framework_toy import ROOT, assert_first_losses, compose_config, run_train_py

from deqzoo.sweep import read_summary
from deqzoo.train import train
from torchdeq.dropout import VariationalDropout
from torchdeq.solver import get_solver

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
    assert_first_losses(metrics, 2.350939, 2.258173)
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
