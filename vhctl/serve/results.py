"""Scorer results made into server answers, as ``vhctl score`` writes its lines.

The scorer marks each record it cut to the model's limit (``"truncated": true``), since a server
answers each request; normalisation and JSON safety are :func:`vhctl.scoring.pipeline.finish_result`.
"""

from __future__ import annotations

from typing import Any

from vhctl.scoring.pipeline import finish_result

__all__ = ["finish_results"]


def finish_results(results: list[dict[str, Any]], normalization: tuple[float, float] | None) -> None:
    """In place: values normalised (``--normalize``), non-finite numbers as null; errors untouched."""
    for result in results:
        if "error" not in result:
            finish_result(result, normalization)
