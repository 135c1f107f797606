"""Sphinx configuration of the static site (``make site``): the README, the notebooks as committed
(their outputs are read, never executed again) and the API reference from the docstrings.

The source folder is the repository's root (``sphinx-build -c docs . build/site``), so the pages are
the very files a learner opens; ``include_patterns`` keeps everything else out. Everything the pages
need is bundled: MathJax comes from the ``sphinx-mathjax-offline`` package (its import name has dashes),
so formulas render without a network; ``_static/fit_the_column.css`` wraps code at the content column.
"""

from __future__ import annotations

import dataclasses
import re

project = "mpn_tutorial"
author = "the mpn_tutorial developers"
copyright = "MIT licence"
root_doc = "docs/index"
include_patterns = ["docs/*.md", "README.md", "notebooks/[0-9][0-9]_*.ipynb", "notebooks/appendix_*.ipynb"]
exclude_patterns = ["build", ".venv", "answer_key", "data"]
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx-mathjax-offline"]

# notebooks: committed outputs only
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
# A cell's display(Markdown(...)) output is read as MyST, like the cells' own prose: CommonMark (myst-nb's default
# for outputs) has no tables, and the notebooks' tables would show as raw pipe text. JupyterLab renders the same
# outputs as GitHub-flavoured Markdown, tables included.
nb_render_markdown_format = "myst"
myst_heading_anchors = 3
# the explorers are live widgets in JupyterLab; a static page shows the picture they start with
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None),
                              ("html", "application/vnd.jupyter.widget-state+json", None)]
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_typehints = "description"
napoleon_google_docstring = True

# How a default that is no literal would print, and how a reader would write it instead
_OBJECT_REPRS = [(re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>"), r"\1"),                # a class: its name
                 (re.compile(r"<function (?:[\w.]+\.)?(\w+) at 0x[0-9a-f]+>"), r"\1")]  # a function: its name


def _real_defaults(app, what, name, obj, options, signature, return_annotation):
    """Defaults as a reader would write them. A class or a function as a default prints as its repr
    (``<class 'mpn_tutorial.models.BatchAttention'>``): show its name. A dataclass field made with
    ``field(default_factory=...)`` shows ``<factory>`` in the generated ``__init__``: show what the factory
    makes (``history=[]``)."""
    if not signature:
        return None
    for pattern, replacement in _OBJECT_REPRS:
        signature = pattern.sub(replacement, signature)
    if "<factory>" in signature and dataclasses.is_dataclass(obj):
        for field in dataclasses.fields(obj):
            if field.default_factory is not dataclasses.MISSING:
                try:
                    default = repr(field.default_factory())
                except Exception:  # a factory that needs more than a call: name it
                    default = f"{getattr(field.default_factory, '__qualname__', 'factory')}()"
                signature = re.sub(rf"(\b{field.name}(?:: [^,=]+)? ?= ?)<factory>", lambda m, d=default: m.group(1) + d,
                                   signature)
    return signature, return_annotation


html_theme = "furo"
html_title = "mpn_tutorial: message passing over the mini-batch"
html_show_sourcelink = False
# code and outputs wrap at the content column instead of scrolling sideways
html_static_path = ["_static"]
html_css_files = ["fit_the_column.css"]


def setup(app):
    app.connect("autodoc-process-signature", _real_defaults)
