"""Starting ``torchrun`` in tests: 2 processes on the CPU, gloo on the loopback (no GPU, no network)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# What a launcher sets: removed, so a test's torchrun starts its own job.
LAUNCH_VARS = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
)


def torchrun_command() -> list[str]:
    """How to start torchrun with this Python (its script, or ``python -m torch.distributed.run``)."""
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def torchrun_env() -> dict[str, str]:
    """The environment of a torchrun test: no launcher variables, one thread, gloo on the loopback."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # rendezvous and gloo on the loopback only
    return env
