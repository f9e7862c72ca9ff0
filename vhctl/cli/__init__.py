"""The ``vhctl`` command line: a thin Typer layer over the library (parse, call, render)."""

__all__: list[str] = []
