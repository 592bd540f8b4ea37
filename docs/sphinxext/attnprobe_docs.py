"""Local Sphinx extension: API coverage and docstring checks, plus helpers.

* Every public name (the ``__all__`` of the package and of its public
  submodules) must be listed in an autosummary of ``docs/api.rst``.
* Every public class, function and own public method must carry the numpydoc
  sections in ``REQUIRED_CHECKS``; estimators also need an Attributes section.

Each failure is a Sphinx warning, so ``sphinx-build -W`` fails on it.
"""

import importlib
import inspect
import os
import pkgutil
import re
import warnings
from pathlib import Path

import sklearn_attnprobe

DOCS = Path(__file__).resolve().parents[1]


def reset_torch(gallery_conf, fname):
    """sphinx-gallery ``reset_modules`` hook: same seeds and thread count
    before every example."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("SPHINX_TORCH_THREADS", "1")))
    np.random.seed(0)


# Reading order of the gallery; examples not listed follow, by file name.
EXAMPLE_ORDER = (
    "plot_attention_weights.py",
    "plot_attention_entropy.py",
    "plot_probe_comparison.py",
    "plot_weight_decay_sweep.py",
    "plot_weight_decay_meaning.py",
)


class ExampleOrder:
    """sphinx-gallery ``within_subsection_order`` key: EXAMPLE_ORDER first."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        name = os.path.basename(str(filename))
        if name in EXAMPLE_ORDER:
            return (EXAMPLE_ORDER.index(name), name)
        return (len(EXAMPLE_ORDER), name)

    def __repr__(self):
        return f"ExampleOrder({EXAMPLE_ORDER!r})"


# numpydoc validation codes required of each kind of documented object.
#   PR01 a parameter is not documented     PR02 a documented parameter
#   PR07 a parameter has no description         does not exist
#   RT01 no Returns section                RT03 a return value has no
#   SA01 no See Also section                    description
#   EX01 no Examples section               GL08 no docstring at all
REQUIRED_CHECKS = {
    "class": {"GL08", "PR01", "PR02", "PR07", "SA01", "EX01"},
    "function": {"GL08", "PR01", "PR02", "PR07", "RT01", "RT03", "SA01", "EX01"},
    "method": {"GL08", "PR01", "PR02", "RT01"},
}

# Docstrings that miss a section and live in modules the documentation does
# not own (they belong to their modules' authors). Each entry is a known gap
# to close, not a permanent exemption: delete it once the docstring is
# complete (the build reports entries that no longer hide anything). Keys
# are qualified names where the code defines them ("Class" or
# "Class.method"); values are the numpydoc codes to skip, "ATTRS" for a
# missing Attributes section.
_PREDICT_GAP = {"PR01", "RT01"}
KNOWN_GAPS = {}


def _public_names():
    """``(module, name)`` of everything the package exports."""
    out = [("sklearn_attnprobe", n) for n in sklearn_attnprobe.__all__
           if not n.startswith("__")]
    for info in pkgutil.iter_modules(sklearn_attnprobe.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"sklearn_attnprobe.{info.name}")
        for n in getattr(mod, "__all__", []):
            obj = getattr(mod, n)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                # re-exported at the top level: documented there
                if getattr(sklearn_attnprobe, n, None) is obj:
                    continue
                out.append((mod.__name__, n))
    return out


def _documented_names():
    """Names listed under an autosummary directive in api.rst."""
    text = (DOCS / "api.rst").read_text()
    names, current = set(), "sklearn_attnprobe"
    in_summary = False
    for line in text.splitlines():
        m = re.match(r"\.\. currentmodule:: (\S+)", line)
        if m:
            current = m.group(1)
            continue
        if line.startswith(".. autosummary::"):
            in_summary = True
            continue
        if in_summary:
            stripped = line.strip()
            if not stripped or stripped.startswith(":"):
                continue
            if not line.startswith(" "):
                in_summary = False
                continue
            names.add(stripped if "." in stripped and stripped.startswith(current)
                      else f"{current}.{stripped}")
    return names


def _own_methods(cls):
    """Public methods of ``cls`` defined in this package (not inherited from
    scikit-learn), as ``(qualname where defined, dotted path via cls)``."""
    out = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_"):
            continue
        func = inspect.unwrap(member) if callable(member) else None
        if func is None or not (inspect.isfunction(func) or inspect.ismethod(func)):
            continue
        if not getattr(func, "__module__", "").startswith("sklearn_attnprobe"):
            continue
        out.append((func.__qualname__, f"{cls.__module__}.{cls.__name__}.{name}"))
    return out


def check_api(app):
    """Fail (as a warning) on undocumented public names or missing sections."""
    from numpydoc.validate import validate
    from sphinx.util import logging

    logger = logging.getLogger("sklearn_attnprobe.docs")
    documented = _documented_names()
    used = {key: set() for key in KNOWN_GAPS}  # codes each entry did hide
    for module, name in _public_names():
        full = f"{module}.{name}"
        if full not in documented:
            logger.warning(f"public name {full} is missing from docs/api.rst")
        obj = getattr(importlib.import_module(module), name)
        kind = "class" if inspect.isclass(obj) else "function"
        targets = [(kind, f"{obj.__module__}.{obj.__qualname__}", full, obj.__qualname__)]
        if kind == "class":
            targets += [("method", path, f"{full}.{path.rsplit('.', 1)[1]}", qual)
                        for qual, path in _own_methods(obj)]
        for kind_, path, shown, qual in targets:
            # validate through the public name so that numpydoc sees the
            # object as the docs show it (inherited methods included)
            result = validate(shown)
            skip = KNOWN_GAPS.get(qual, set())
            for code, msg in result["errors"]:
                if code not in REQUIRED_CHECKS[kind_]:
                    continue
                if code in skip:
                    used[qual].add(code)
                else:
                    logger.warning(f"{shown}: {code} {msg}")
        if kind == "class" and hasattr(obj, "fit"):
            from numpydoc.docscrape import ClassDoc

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                doc = ClassDoc(obj, config={"show_class_members": False})
            if not doc["Attributes"]:
                if "ATTRS" in KNOWN_GAPS.get(obj.__qualname__, set()):
                    used[obj.__qualname__].add("ATTRS")
                else:
                    logger.warning(f"{full}: estimator docstring has no Attributes section")
    for key, codes in KNOWN_GAPS.items():
        if codes - used[key]:
            logger.info(f"KNOWN_GAPS[{key!r}]: {sorted(codes - used[key])} no longer "
                        "needed; remove it from docs/sphinxext/attnprobe_docs.py")


_SKLEARN_ROLE = re.compile(r":(?:term|ref):`(?:([^`<]*?)\s*<[^`>]*>|([^`]*))`")


def plain_foreign_roles(app, what, name, obj, options, lines):
    """Docstrings inherited from scikit-learn (``score``, ``get_params``...)
    link to scikit-learn's glossary and labels, which this site does not
    have: keep their text and drop the link. Their "Added in version" notes
    give scikit-learn versions: drop them."""
    module = getattr(inspect.unwrap(obj), "__module__", None) or ""
    if module.startswith("sklearn_attnprobe") or not module.startswith("sklearn"):
        return
    out, skipping = [], None
    for line in lines:
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if skipping is not None:
            if not stripped or indent > skipping:
                continue  # body of a version note
            skipping = None
        if stripped.startswith((".. versionadded::", ".. versionchanged::")):
            # scikit-learn's version numbers would read as this package's
            skipping = indent
            continue
        out.append(_SKLEARN_ROLE.sub(
            lambda m: f"*{(m.group(1) or m.group(2)).strip()}*", line))
    lines[:] = out


def setup(app):
    app.connect("builder-inited", check_api)
    app.connect("autodoc-process-docstring", plain_foreign_roles)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
