"""DEQConfig is the one record of the options: add_deq_args, signatures and conf/ follow it."""

import argparse
import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from torchdeq.core import DEQBase, DEQIndexing, DEQSliced
from torchdeq.grad import backward_factory
from torchdeq.norm.spectral_norm import SpectralNorm
from torchdeq.norm.weight_norm import WeightNorm
from torchdeq.reversible import ReversibleDEQ
from torchdeq.utils import add_deq_args
from torchdeq.utils.args import command_line_default
from torchdeq.utils.checks import OptionError
from torchdeq.utils.config import DEQConfig, check_option

CONF = Path(__file__).resolve().parents[2] / "conf"
DEFAULTS = DEQConfig.defaults()


def signature_defaults(fn) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_config_every_option_has_a_spec_with_help():
    for name in DEQConfig.keys():
        spec = DEQConfig.spec(name)
        assert spec.help and spec.group.startswith("DEQ"), name
        assert spec.kind in ("int", "float", "str", "flag", "ints", "name", "dict"), name
    with pytest.raises(OptionError, match="f_solvr"):
        DEQConfig.spec("f_solvr")


def test_config_core_signatures_are_the_config_defaults():
    base = signature_defaults(DEQBase.__init__)
    for cls in (DEQIndexing, DEQSliced):
        sampled = signature_defaults(cls.__init__)
        assert sampled == {k: DEFAULTS[k] for k in sampled if k != "args"} | {"args": None}
    assert base == {k: DEFAULTS[k] for k in base if k != "args"} | {"args": None}
    reversible = signature_defaults(ReversibleDEQ.__init__)
    assert reversible["beta"] == DEFAULTS["beta"]
    covered = set(base) | set(signature_defaults(DEQSliced.__init__)) | set(reversible)
    assert {
        k for k in DEFAULTS if DEQConfig.spec(k).group in ("DEQ solvers", "DEQ core and gradients")
    } - covered == {"core"}
    phantom = signature_defaults(backward_factory)
    assert {k: phantom[k] for k in ("tau", "sup_gap", "sup_loc")} == {
        k: DEFAULTS[k] for k in ("tau", "sup_gap", "sup_loc")
    }


def test_config_norm_signatures_are_the_config_defaults():
    weight = signature_defaults(WeightNorm.apply)
    spectral = signature_defaults(SpectralNorm.apply)
    assert weight["learn_scale"] is not DEFAULTS["norm_no_scale"]
    assert (weight["target_norm"], weight["clip"], weight["clip_value"]) == (
        DEFAULTS["norm_target_norm"],
        DEFAULTS["norm_clip"],
        DEFAULTS["norm_clip_value"],
    )
    assert spectral["n_power_iterations"] == DEFAULTS["sn_n_power_iters"]


def test_config_add_deq_args_is_generated_from_the_config():
    parser = add_deq_args(argparse.ArgumentParser())
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    assert set(actions) == {k for k in DEFAULTS if DEQConfig.spec(k).kind != "dict"}
    for name, action in actions.items():
        spec = DEQConfig.spec(name)
        assert action.default == command_line_default(name) and action.help == spec.help, name
        assert action.choices == (None if spec.choices is None else list(spec.choices)), name
        assert (action.nargs == "+") == (spec.kind == "ints"), name
    # the parsed defaults are the config's, once read as the cores read them
    parsed = vars(parser.parse_args([]))
    for name, value in parsed.items():
        assert check_option(name, value) == check_option(name, DEFAULTS[name]), name


def test_config_train_yaml_nodes_are_the_config_defaults():
    train = OmegaConf.load(CONF / "train.yaml")
    deq = OmegaConf.to_container(train.deq)
    assert set(deq) <= set(DEFAULTS), set(deq) - set(DEFAULTS)
    assert deq == {k: DEFAULTS[k] for k in deq}
    norm = OmegaConf.to_container(train.norm)
    assert norm == {
        k: DEFAULTS[k] for k in DEFAULTS if DEQConfig.spec(k).group == "DEQ normalisation"
    }
    # the norm group files only choose the type: the defaults are written once
    for path in sorted((CONF / "norm").glob("*.yaml")):
        assert OmegaConf.to_container(OmegaConf.load(path)) == {"norm_type": path.stem}


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("f_max_iter", 3.0, 3),
        ("f_tol", 0, 0.0),
        ("grad", 2, [2]),
        ("grad", [1, 2], [1, 2]),
        ("indexing", [], None),
        ("sup_loc", None, None),
        ("ift", 1, True),
        ("no_stat", None, None),
        ("f_stop_mode", "rel", "rel"),
        ("f_solver", "anderson", "anderson"),
    ],
)
def test_config_check_option_converts_valid_values(name, value, expected):
    assert check_option(name, value) == expected


@pytest.mark.parametrize(
    "name, value",
    [
        ("f_max_iter", -1),
        ("f_max_iter", 2.5),
        ("n_states", 0),
        ("f_tol", -1e-3),
        ("eval_factor", 0.0),
        ("tau", 1.5),
        ("tau", 0.0),
        ("jac_loss_freq", 2.0),
        ("grad", [1, 0]),
        ("indexing", ["a"]),
        ("f_stop_mode", "rell"),
        ("norm_clip_value", 0.0),
    ],
)
def test_config_check_option_names_bad_values(name, value):
    with pytest.raises(OptionError, match=name):
        check_option(name, value)
