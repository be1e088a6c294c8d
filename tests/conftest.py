"""Shared test set-up: one intra-op thread, torchdeq in strict mode, ``tests/`` importable.

The tests use tiny tensors, which only lose time to thread hand-offs (on a loaded 2-core machine
a small conv took 21 ms with two threads against 0.1 ms with one).

Strict mode turns every unknown (ignored) option into an OptionError, so no code under test
passes an option the library does not know. The environment variable reaches subprocesses too
(training runs started by the tests).

Test modules are imported by file (``--import-mode=importlib``), so the same file name may
appear in several folders (``tests/projects/<name>/test_net.py``); their shared helpers
(``framework_toy``, ``problems``) live in ``tests/`` and are imported by name.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ["TORCHDEQ_STRICT"] = "1"
torch.set_num_threads(1)


@pytest.fixture
def lenient(monkeypatch):
    """Runs a test outside strict mode, with a fresh record of the warnings already given."""
    from torchdeq.utils import checks

    monkeypatch.setattr(checks, "_warned", set())
    with checks.strict(False):
        yield
