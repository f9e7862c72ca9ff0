"""The vhctl checkpoint format: manifest, saving, loading (TRL layouts too), checks."""
