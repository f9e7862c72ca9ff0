"""MkDocs hook: show the Sphinx roles of vhctl's docstrings as code in the API reference.

The docstrings are Google style, with Sphinx cross-reference roles inside the text
(``:class:`~vhctl.modeling.wrapper.PreTrainedModelWrapper```), which mkdocstrings renders
verbatim. This turns each into plain code: the last component for the ``~`` form, the whole path
otherwise, as Sphinx shows them.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):<code>(~?)([\w.]+)</code>")


def _short(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    """Rewrite the roles left in a rendered page."""
    return ROLE.sub(_short, html)
