"""Input/output helpers that know nothing of models: hashing, atomic folders, scoring records."""

__all__: list[str] = []
