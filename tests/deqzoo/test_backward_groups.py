"""The grad groups of the new backward passes reach the DEQ that a project builds."""

from __future__ import annotations

import hydra
from framework_toy import compose_config

from torchdeq import ReversibleDEQ


def test_krylov_backward_reaches_the_config_groups():
    deq = hydra.utils.instantiate(compose_config(["project=toy", "grad=ift_gmres"]).model).net.deq
    assert (deq.ift, deq.b_solver_name, deq.b_solver_kwargs) == (True, "gmres", {"restart": None})
    cfg = compose_config(["project=toy", "grad=ift", "deq.b_solver=bicgstab"])
    assert hydra.utils.instantiate(cfg.model).net.deq.b_solver_name == "bicgstab"


def test_reversible_config_group_builds_the_core():
    cfg = compose_config(["project=toy", "grad=reversible", "deq.beta=0.7"])
    deq = hydra.utils.instantiate(cfg.model).net.deq
    assert isinstance(deq, ReversibleDEQ) and deq.beta == 0.7
