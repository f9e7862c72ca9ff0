"""Tell causal from seq2seq LMs from a config alone (re-exported from the storage layer)."""

from __future__ import annotations

from vhctl.checkpoint.config import auto_class_for, detect_architecture

__all__ = ["auto_class_for", "detect_architecture"]
