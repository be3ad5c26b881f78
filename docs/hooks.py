"""MkDocs hooks (mkdocs.yml `hooks:`): the recipe reference is generated from the schema at build time,
so the page cannot drift from what `workbench recipe validate` accepts."""

from __future__ import annotations

from typing import Any

from workbench.core import recipe_reference

MARKER = "<!-- recipe-reference -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the marker in docs/recipe-reference.md with every section's table."""
    return markdown.replace(MARKER, recipe_reference.markdown()) if MARKER in markdown else markdown
