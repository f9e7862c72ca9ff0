"""The vhctl checkpoint format: manifest, saving, loading (TRL layouts too), checks."""

__all__: list[str] = []
