"""Sphinx configuration for the trio_ws documentation site.

Build it with ``sphinx-build -W --keep-going -b html docs docs/_build/html``
(what ``.ci/run`` does); it needs the ``docs`` extra.
"""

from __future__ import annotations

import trio_ws

project = "trio_ws"
author = "the trio_ws authors"
copyright = "the trio_ws authors"
release = trio_ws.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinxcontrib_trio",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_intersphinx"]

# -- MyST: the pages are plain Markdown, readable on GitHub as well --------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
# Every heading up to level 3 gets an anchor, the slug GitHub gives it, so that a link such as
# `cancellation.md#get_message` works on GitHub and here; a link to an anchor that does not exist
# is a warning, and so an error under -W.
myst_heading_anchors = 3

# -- autodoc -----------------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}

# -- intersphinx ---------------------------------------------------------------------------------------
# The build runs without network access, so the inventories are read from files kept in the
# repository (docs/_intersphinx/README.md says where they come from and how to renew them) while
# the links still point at the published documentation.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", "_intersphinx/python.inv"),
    "trio": ("https://trio.readthedocs.io/en/stable", "_intersphinx/trio.inv"),
}

# -- HTML ----------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"trio_ws {release}"


def setup(app: object) -> None:
    """HAProxy's configuration (docs/several-machines.md) has no Pygments lexer: show it as text."""
    from pygments.lexers.special import TextLexer
    from sphinx.application import Sphinx

    assert isinstance(app, Sphinx)
    app.add_lexer("haproxy", TextLexer)
