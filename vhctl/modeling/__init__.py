"""Value-head models: the drop-in for TRL's classes (value head, wrappers, reference models)."""
