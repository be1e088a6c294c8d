"""Shared test set-up: one intra-op thread, and ``tests/`` importable from every test folder.

The tests use tiny tensors, which only lose time to thread hand-offs (on a loaded 2-core machine
a small conv took 21 ms with two threads against 0.1 ms with one). Test modules are imported by
file (``--import-mode=importlib``), so the same file name may appear in several folders
(``tests/projects/<name>/test_net.py``); their shared helpers (``framework_toy``, ``problems``)
live in ``tests/`` and are imported by name.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

torch.set_num_threads(1)
