"""deqzoo: the Hydra + Lightning training framework of the DEQ Zoo.

Importing the package registers the OmegaConf resolver ``deqzoo_root`` (the checkout that holds
``conf/`` and ``projects/``), which ``conf/paths`` uses so that runs do not depend on the
current directory. Nothing heavier (Lightning, Hydra) is imported here.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["ROOT"]

ROOT = Path(__file__).resolve().parents[1]

if not OmegaConf.has_resolver("deqzoo_root"):
    OmegaConf.register_new_resolver("deqzoo_root", lambda: str(ROOT))
