"""Shared test set-up: one intra-op thread.

The tests use tiny tensors, which only lose time to thread hand-offs (on a loaded 2-core machine
a small conv took 21 ms with two threads against 0.1 ms with one).
"""

import torch

torch.set_num_threads(1)
