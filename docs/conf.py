"""Sphinx configuration of the sklearn_attnprobe documentation.

Build (from the repository root; see docs/build.sh and docs/building.rst)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Besides rendering, the build checks the API documentation: every public name
(the ``__all__`` of the package and of its public submodules) must appear in
api.rst, and every documented object must carry the numpydoc sections listed
in ``REQUIRED_CHECKS`` of sphinxext/attnprobe_docs.py. A failure is a Sphinx
warning, so ``-W`` turns it into a failed build.
"""

import os
import sys
from pathlib import Path

from numpydoc.xref import DEFAULT_LINKS

import sklearn_attnprobe

# The examples train tiny torch models: one thread by default (enough for
# them, and it leaves the other cores free); SPHINX_TORCH_THREADS overrides.
try:
    import torch

    torch.set_num_threads(int(os.environ.get("SPHINX_TORCH_THREADS", "1")))
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "sphinxext"))

# -- project -----------------------------------------------------------------
project = "sklearn_attnprobe"
author = "sklearn_attnprobe developers"
copyright = "2025, sklearn_attnprobe developers"
release = sklearn_attnprobe.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "attnprobe_docs",  # sphinxext/attnprobe_docs.py: API coverage checks
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
default_role = "literal"  # `x` renders as code instead of guessing a target
pygments_style = "sphinx"
nitpicky = False  # no intersphinx (the build runs offline), so leave it off

# -- autodoc / autosummary / numpydoc ----------------------------------------
autosummary_generate = True
autodoc_default_options = {"inherited-members": True}
autodoc_typehints = "none"
add_module_names = False
toc_object_entries_show_parents = "hide"  # "fit", not "Class.fit", in page TOCs

numpydoc_show_class_members = True
numpydoc_class_members_toctree = False
numpydoc_show_inherited_class_members = True
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = True
numpydoc_xref_aliases = {
    "RaggedArray": "sklearn_attnprobe.RaggedArray",
    "ActivationScaler": "sklearn_attnprobe.ActivationScaler",
    "AttentionProbeClassifier": "sklearn_attnprobe.AttentionProbeClassifier",
    "MeanProbeClassifier": "sklearn_attnprobe.MeanProbeClassifier",
    "LastTokenProbeClassifier": "sklearn_attnprobe.LastTokenProbeClassifier",
    # numpydoc's defaults point builtins ("int", "None", "array-like"...) at
    # the Python and NumPy docs through intersphinx, which an offline build
    # does not have: unresolved, they would render as "python:int". Plain
    # names instead.
    **{word: word for word in DEFAULT_LINKS},
}
numpydoc_xref_ignore = "all"  # words not in the aliases stay plain text

# -- HTML --------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"sklearn_attnprobe {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "building": []}
html_context = {"default_mode": "light"}

# -- sphinx-gallery ----------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": str(DOCS.parent / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "doc_module": ("sklearn_attnprobe",),
    "reference_url": {"sklearn_attnprobe": None},
    "backreferences_dir": "generated/backreferences",
    "within_subsection_order": "attnprobe_docs.ExampleOrder",
    "reset_modules": ("matplotlib", "attnprobe_docs.reset_torch"),
    "download_all_examples": False,
    "remove_config_comments": True,
    "min_reported_time": 1,
    "show_memory": False,
    # an example that raises fails the build (the default, spelled out)
    "only_warn_on_example_error": False,
}
