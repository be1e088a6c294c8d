"""The package surface: plain PyTorch, and the documented names importable from their modules."""

import importlib
import subprocess
import sys

import pytest

DOCUMENTED = {
    "torchdeq.core": [
        "DEQBase",
        "DEQIndexing",
        "DEQSliced",
        "get_deq",
        "register_deq",
        "reset_deq",
    ],
    "torchdeq.grad": ["backward_factory"],
    "torchdeq.solver": ["get_solver", "register_solver", "solver_stat_from_final_step"],
    "torchdeq.solver.fp_iter": ["fixed_point_iter", "simple_fixed_point_iter"],
    "torchdeq.solver.anderson": ["anderson_solver"],
    "torchdeq.solver.broyden": ["broyden_solver"],
    "torchdeq.solver.stat": ["SolverStat"],
    "torchdeq.norm": [
        "apply_norm",
        "reset_norm",
        "remove_norm",
        "register_norm",
        "register_norm_module",
    ],
    "torchdeq.norm.weight_norm": ["WeightNorm"],
    "torchdeq.norm.spectral_norm": ["SpectralNorm"],
    "torchdeq.dropout": [
        "VariationalDropout",
        "VariationalDropout1d",
        "VariationalDropout2d",
        "VariationalDropout3d",
        "VariationalDropToken1d",
        "VariationalDropToken2d",
        "VariationalDropToken3d",
        "reset_dropout",
    ],
    "torchdeq.loss": ["fp_correction", "register_weight_func", "jac_reg", "power_method"],
    "torchdeq.utils": ["add_deq_args", "mem_gc", "mixed_init", "DEQConfig", "strict"],
    "torchdeq.utils.checks": ["OptionError", "OptionWarning", "strict"],
    "torchdeq": ["get_deq", "apply_norm", "reset_norm"],
}


@pytest.mark.parametrize("module", sorted(DOCUMENTED))
def test_package_exports_documented_names(module):
    mod = importlib.import_module(module)
    missing = [name for name in DOCUMENTED[module] if not hasattr(mod, name)]
    assert not missing


def test_package_import_pulls_in_no_framework():
    code = (
        "import sys, torchdeq, torchdeq.utils, torchdeq.core; "
        "print(','.join(m for m in ('hydra', 'omegaconf', 'lightning', 'pytorch_lightning') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
