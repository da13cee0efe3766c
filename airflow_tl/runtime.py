"""Process settings that must be in place before torch is first imported in a task.

Operators call ``prepare_torch_runtime`` at the top of ``execute``; DAG files never import torch,
so in a task process this runs first. Code that imports torch itself may call it beforehand.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

# OpenMP's default lets idle threads spin at every barrier of torch's parallel regions. The loader's
# threads (GETs, decoding) then compete with spinning threads for the same cores, and on a small
# machine feature extraction ran ~10 % slower than with threads that sleep (docs/performance.md).
DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def prepare_torch_runtime() -> None:
    """Apply ``DEFAULTS`` unless the environment sets them; a no-op once torch is imported."""
    if "torch" in sys.modules:
        log.debug("torch is already imported; leaving %s as they are", ", ".join(DEFAULTS))
        return
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
