#!/usr/bin/env bash
# One-shot set-up on a fresh machine: the package with its zoo and development extras.
# torch/torchvision are pinned to the releases that ship as local wheels on these machines
# (pip would otherwise download a multi-GB build); elsewhere any torch >= 2.1 works.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" \
  || python -m pip install -q --disable-pip-version-check torch torchvision
python -m pip install -q --disable-pip-version-check -e ".[zoo,dev]"
