"""Sphinx configuration of the static site (``make site``): the README, the seven notebooks as committed
(their outputs are read, never executed again) and the API reference from the docstrings.

The source folder is the repository's root (``sphinx-build -c docs . build/site``), so the pages are
the very files a learner opens; ``include_patterns`` keeps everything else out. Everything the pages
need is bundled: MathJax comes from the ``sphinx-mathjax-offline`` package (its import name has dashes), so formulas render
without a network.
"""

from __future__ import annotations

project = "mpn_tutorial"
author = "the mpn_tutorial developers"
copyright = "MIT licence"
root_doc = "docs/index"
include_patterns = ["docs/*.md", "README.md", "notebooks/[0-9][0-9]_*.ipynb"]
exclude_patterns = ["build", ".venv", "answer_key", "data"]
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx-mathjax-offline"]

# notebooks: committed outputs only
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
# the explorers are live widgets in JupyterLab; a static page shows the picture they start with
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None),
                              ("html", "application/vnd.jupyter.widget-state+json", None)]
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_typehints = "description"
napoleon_google_docstring = True

html_theme = "furo"
html_title = "mpn_tutorial: message passing over the mini-batch"
html_show_sourcelink = False
