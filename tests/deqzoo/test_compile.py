"""``model.compile=true``: the zoo compiles a net's equilibrium cell in place."""

from __future__ import annotations

import hydra
import pytest
from framework_toy import compose_config
from torch import nn

from deqzoo.module import compile_cell


def test_zoo_compile_option_compiles_the_cell():
    model = hydra.utils.instantiate(compose_config(["project=toy", "model.compile=true"]).model)
    assert model.net.cell._compiled_call_impl is not None
    plain = hydra.utils.instantiate(compose_config(["project=toy"]).model)
    assert plain.net.cell._compiled_call_impl is None
    assert list(model.state_dict()) == list(plain.state_dict())
    with pytest.raises(ValueError, match="no `cell` module"):
        compile_cell(nn.Linear(2, 2))


@pytest.mark.slow
def test_zoo_fast_dev_run_with_a_compiled_cell(tmp_path):
    from deqzoo.train import train

    train(compose_config(["project=toy", "debug=fdr", "model.compile=true"], tmp_path))
