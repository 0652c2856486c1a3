"""Sphinx configuration of the drift_jax user documentation.

Build: python -m sphinx -W -b html docs docs/_build
"""

import os
import sys

# The package is importable from the repository root (autodoc reads its docstrings).
sys.path.insert(0, os.path.abspath('..'))

project = 'drift_jax'
author = 'drift_jax contributors'
copyright = 'drift_jax contributors'
release = '0.1.0'

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',  # Google-style docstrings (Args:, Returns:)
    'sphinx.ext.viewcode',
]

source_suffix = {'.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build']

myst_enable_extensions = ['dollarmath']
# Anchors for headings down to level 3, so pages can link to sections: [x](field.md#forms).
myst_heading_anchors = 3

napoleon_google_docstring = True
napoleon_numpy_docstring = False
# 'Attributes:' sections as fields of their class (autodoc also lists dataclass fields).
napoleon_use_ivar = True
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'

html_theme = 'alabaster'
html_title = 'drift_jax'
