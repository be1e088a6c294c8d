"""Every config file composes, resolves and instantiates; group choices reach the config."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from framework_toy import CONF_DIR, compose_config
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from deqzoo import ROOT
from deqzoo.instantiate import instantiate_named
from torchdeq.utils.config import DEQConfig

CONF = ROOT / "conf"
GROUPS = ("solver", "grad", "norm", "dropout", "trainer", "logger", "callbacks", "debug")


def _options(folder: Path, pattern: str = "*.yaml") -> list[str]:
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.glob(pattern))


def _params(names: list[str], what: str) -> list:
    # A folder with no files yet still yields one (skipped) case, so files added later are
    # picked up without touching this module.
    return names or [pytest.param(None, marks=pytest.mark.skip(reason=f"no {what} yet"))]


def _resolved(cfg) -> dict:
    """Resolves every interpolation outside the Hydra node (which Hydra resolves itself)."""
    return OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS for o in _options(CONF / g)], ids=lambda v: str(v)
)
def test_configs_group_option_composes_and_instantiates(group, option, tmp_path):
    cfg = compose_config(["project=toy", f"{group}={option}"], tmp_path)
    assert cfg.hydra.runtime.choices[group] == option
    _resolved(cfg)
    instantiate_named(cfg.get("callbacks"), "callback")
    instantiate_named(cfg.get("logger"), "logger")
    if cfg.trainer.accelerator in ("cpu", "auto") or torch.cuda.is_available():
        hydra.utils.instantiate(cfg.trainer)


@pytest.mark.parametrize("launcher", _options(CONF / "hydra" / "launcher"))
def test_configs_launcher_composes_to_a_launcher_class(launcher, tmp_path):
    cfg = compose_config(["project=toy", f"hydra/launcher={launcher}", "trainer=ddp"], tmp_path)
    launcher_cls = hydra.utils.get_class(cfg.hydra.launcher._target_)
    assert launcher_cls.__name__.endswith("Launcher")
    OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


@pytest.mark.parametrize(
    "project", _options(CONF / "project") + _options(CONF_DIR / "project"), ids=str
)
def test_configs_project_instantiates(project, tmp_path):
    cfg = compose_config([f"project={project}", "debug=fdr"], tmp_path)
    _resolved(cfg)
    hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize(
    "experiment", _params(_options(CONF / "experiment", "**/*.yaml"), "experiments")
)
def test_configs_experiment_instantiates(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}", "debug=fdr"], tmp_path)
    assert cfg.hydra.runtime.choices.project, f"experiment {experiment} must choose a project"
    _resolved(cfg)
    hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_configs_missing_project_names_the_choices():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config([])
    message = str(err.value)
    assert "project" in message and "toy" in message


def test_configs_command_line_solver_beats_project_choice():
    assert compose_config(["project=toy_broyden"]).deq.f_solver == "broyden"
    cfg = compose_config(["project=toy_broyden", "solver=anderson"])
    assert (cfg.deq.f_solver, cfg.deq.b_solver) == ("anderson", "anderson")
    assert dict(cfg.deq.f_solver_kwargs) == {
        "m": 6, "lam": 1e-4, "tau": 1.0, "safeguard": False, "max_weight": 1e4
    }


def test_configs_deq_node_holds_the_library_defaults():
    # The toy project changes only the iteration counts; everything else is the default set.
    deq = OmegaConf.to_container(compose_config(["project=toy"]).deq)
    library = DEQConfig().to_dict()
    assert set(deq) <= set(library), set(deq) - set(library)
    changed = {k for k in deq if deq[k] != library[k]}
    assert changed == {"f_max_iter", "b_max_iter", "f_solver_kwargs", "b_solver_kwargs"}
    assert deq["f_solver_kwargs"] == {"tau": 1.0}


def test_configs_norm_node_holds_the_library_defaults():
    norm = OmegaConf.to_container(compose_config(["project=toy"]).norm)
    library = DEQConfig().to_dict()
    assert norm == {k: library[k] for k in norm}
    assert set(norm) == {k for k in library if k.startswith(("norm_", "sn_"))}


def test_configs_multirun_folders_are_named_after_overrides(tmp_path):
    cfg = compose_config(["project=toy", "solver=anderson", "deq.f_max_iter=5"], tmp_path)
    assert cfg.hydra.sweep.subdir == "deq.f_max_iter=5,solver=anderson"
