"""Alias of :mod:`vhctl.scoring.distributed`, where data-parallel scoring's plumbing now lives.

Kept so that the documented path (``vhctl.distributed.Group.all_gather``) still works.
"""

from __future__ import annotations

from vhctl.scoring.distributed import *  # noqa: F403 - every public name, as listed in its __all__
from vhctl.scoring.distributed import __all__ as __all__
