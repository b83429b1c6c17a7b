"""Sphinx configuration for the ipcclient docs (`make docs`)."""

project = "ipcclient"
author = "ipcclient developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
html_theme = "alabaster"
suppress_warnings = ["myst.header"]
