"""Trainers that take a Python object rather than a URL or a folder: vhctl's scoring in their shape.

- :mod:`vhctl.integrations.trl`: a reward function for TRL's ``GRPOTrainer`` (``trl_reward``).

Beside :mod:`vhctl.serve`, above :mod:`vhctl.scoring`; none of it imports the trainer itself.
"""

from __future__ import annotations

__all__: list[str] = []
