"""Builders of the code tasks: ``code_language`` (windows of source and
documentation files labelled by language) and ``python_tests`` (library
modules vs their test modules).

Each builder returns the texts of every class and what :func:`tasks.build_task
<benchmarks.study.tasks.build_task>` needs to turn them into a hashed
:class:`~benchmarks.study.tasks.Task`.
"""

try:                                     # imported as benchmarks.study._code_tasks
    from . import _sources as src
    from ._task_common import Labelled, seeded_rng
except ImportError:                      # run as a script from this folder
    import _sources as src
    from _task_common import Labelled, seeded_rng

__all__ = []


# -- code_language -----------------------------------------------------------------------
# Packages that `pip install torch==2.13.0 -e ".[test,hf,docs,study]"` brings.
_PY_PKGS = ("numpy", "scipy", "scikit-learn", "pandas", "matplotlib", "sympy",
            "networkx", "torch", "transformers", "sphinx", "docutils", "jinja2",
            "pygments", "requests", "hypothesis", "rich", "pydantic", "fonttools",
            "pytest", "joblib")
_TORCH_CPP = ["torch/include/c10/*.h", "torch/include/ATen/*.h",
              "torch/include/torch/csrc/*.h", "torch/include/pybind11/*.h",
              "torch/include/*.hpp", "torch/include/*.cpp"]
_TORCH_CPP_SKIP = ["torch/include/ATen/ops/*", "*/cuda/*", "*/hip/*", "*.cuh",
                   "*/qnnpack/*", "*/xnnpack/*"]
_SCI = ("numpy", "scipy", "scikit-learn")
# class -> (comment style, [(package, include globs, exclude globs), ...]);
# package "METADATA:<type>" means the long descriptions (README text in the
# .dist-info/METADATA file) of the packages _sources.README_PACKAGES lists for
# that content type. Every package named here is pinned in _sources.STUDY_PINS.
CODE_CLASSES = {
    "Python": ("hash", [(p, ["*.py"], ["*/tests/*", "*/testing/*", "*/_vendor/*",
                                       "*/vendored/*", "*/externals/*"])
                        for p in _PY_PKGS]),
    "C": ("slash", [("numpy", ["*.c", "numpy/_core/include/numpy/*.h"], []),
                    ("scipy", ["*.c", "*.h"], []),
                    ("scikit-learn", ["*.c"], []),
                    ("markupsafe", ["*.c"], [])]),
    "C++": ("slash", [("torch", _TORCH_CPP, _TORCH_CPP_SKIP),
                      ("scikit-learn", ["*.cpp"], []),
                      ("scipy", ["*.cpp", "*.hpp"], [])]),
    "Cython": ("hash", [(p, ["*.pyx", "*.pxd", "*.pxi", "*.pyx.tp", "*.pxd.tp"], [])
                        for p in _SCI]),
    "Fortran": ("fortran", [("numpy", ["*.f", "*.f90", "*.f95", "*.F", "*.F90"], []),
                            ("scipy", ["*.f", "*.f90"], [])]),
    "JavaScript": ("slash", [("sphinx", ["sphinx/themes/*.js", "sphinx/search/*.js"],
                              ["*.min.js"]),
                             ("matplotlib", ["*.js"], ["*.min.js"]),
                             ("pydata-sphinx-theme", ["*.js"], ["*.min.js"]),
                             ("sphinx-gallery", ["*.js"], ["*.min.js"]),
                             ("scikit-learn", ["*.js"], ["*.min.js"])]),
    "CSS": ("slash", [(p, ["*.css", "*.css_t"], ["*.min.css"])
                      for p in ("docutils", "matplotlib", "sphinx", "sphinx-gallery",
                                "scikit-learn", "alabaster", "pydata-sphinx-theme")]),
    "HTML": ("markup", [(p, ["*.html"], []) for p in
                        ("sphinx", "pydata-sphinx-theme", "alabaster", "matplotlib",
                         "sphinx-gallery")]),
    "TeX": ("tex", [("sphinx", ["sphinx/texinputs/*", "sphinx/templates/latex/*"],
                     ["*.xdy", "*.py", "*Makefile*", "*.bat", "*.js"]),
                    ("docutils", ["*.tex", "*.sty"], [])]),
    "CMake": ("hash", [("torch", ["*.cmake", "*CMakeLists.txt"], [])]),
    "Markdown": ("none", [("METADATA:text/markdown", [], [])]),
    "reStructuredText": ("none", [("METADATA:text/x-rst", [], []),
                                  ("scikit-learn", ["*.rst"], []),
                                  ("sphinx-gallery", ["*.rst"], [])]),
}
CODE_LICENSE = ("files of installed open-source packages, each under its own "
                "license (BSD-3-Clause: numpy, scipy, scikit-learn, torch, "
                "pandas, matplotlib-PSF-style, sphinx BSD-2-Clause, docutils "
                "public domain/BSD; see the manifest's package list)")


def class_streams(specs, rng, comments, per_file=4):
    """Window streams of one class: one per package spec, and one per README
    for a ``METADATA:<type>`` spec (so READMEs are spread evenly)."""
    streams = []
    for spec in specs:
        files = src.file_sources(spec)
        if spec[0].startswith("METADATA:"):
            streams += [src.window_stream([f], rng, comments, per_file) for f in files]
        elif files:
            streams.append(src.window_stream(files, rng, comments, per_file))
    return streams


def windows_per_class(name, n, seed, classes, streams_of, log):
    """``n`` windows for each class of the dict ``classes``, taken in turn
    from the streams ``streams_of(cls, value, rng)`` gives (see
    :func:`_sources.round_robin`); no window goes to two classes and the
    files used are logged. ValueError when a class's streams run dry first."""
    per_class, seen_text, file_of = [], set(), {}
    for cls, value in classes.items():
        streams = streams_of(cls, value, seeded_rng(name, seed, cls))
        got = src.round_robin(streams, n, seen_text, file_of)
        if len(got) < n:
            raise ValueError(f"{name}/{cls}: only {len(got)} windows available from "
                             f"the installed packages, asked for {n} (lower "
                             f"n_per_class)")
        for dist, path, data, w in got:
            log.add(dist, path, data)
        per_class.append([w for *_, w in got])
    return per_class


def build_code_language(name, n, seed):
    log = src.SourceLog()
    per_class = windows_per_class(
        name, n, seed, CODE_CLASSES,
        lambda cls, spec, rng: class_streams(spec[1], rng, spec[0]), log)
    return Labelled(per_class, tuple(CODE_CLASSES), "code",
                    "windows of lines from source and documentation files of "
                    "installed Python distributions (numpy, scipy, scikit-learn, "
                    "torch, sphinx, docutils, ...), labelled by language",
                    CODE_LICENSE, log.as_dict())


# -- python_tests -------------------------------------------------------------------------
PT_PACKAGES = ("numpy", "scipy", "scikit-learn", "pandas", "matplotlib", "networkx",
               "sympy")


def _is_test(path):
    base = path.rsplit("/", 1)[-1]
    return "/tests/" in path and base.startswith("test_") and base.endswith(".py")


def _is_library(path):
    base = path.rsplit("/", 1)[-1]
    return (path.endswith(".py") and not any(
        part in path for part in ("/tests/", "/testing/", "/_vendor/", "/externals/",
                                  "/benchmarks/", "conftest"))
            and not base.startswith("test") and base != "__init__.py")


def build_python_tests(name, n, seed):
    log = src.SourceLog()
    # all of them, pinned: leaving out a missing one would change the texts
    pkgs = [src.pinned(p) for p in PT_PACKAGES]
    seen_text, file_of, out = set(), {}, [[], []]
    streams = []
    for dist in pkgs:
        files = src.list_files(dist, ["*.py"])
        lib = [(dist, p) for p in files if _is_library(p)]
        tst = [(dist, p) for p in files if _is_test(p)]
        if lib and tst:
            rng = seeded_rng(name, seed, src.dist_name(dist))
            streams.append((src.window_stream(lib, rng, "hash", 2, middle=True),
                            src.window_stream(tst, rng, "hash", 2, middle=True)))
    # the same number of windows per package in both classes
    while streams and len(out[0]) < n:
        for pair in list(streams):
            got = [src.round_robin([s], 1, seen_text, file_of) for s in pair]
            if not all(got):
                streams.remove(pair)
                for g in got:          # give back the unpaired window
                    for *_, w in g:
                        seen_text.discard(w)
                continue
            for k in (0, 1):
                out[k].append(got[k][0])
            if len(out[0]) >= n:
                break
    if len(out[0]) < n:
        raise ValueError(f"{name}: only {len(out[0])} window pairs available, "
                         f"asked for {n}")
    for k in (0, 1):
        for dist, path, data, w in out[k]:
            log.add(dist, path, data)
    return Labelled([[w for *_, w in o] for o in out],
                    ("library code", "test code"), "code",
                    "windows from the middle (after the imports, past the first "
                    "10%) of Python modules of numpy, scipy, scikit-learn, pandas, "
                    "matplotlib, networkx, sympy: tests/test_*.py vs library modules",
                    "BSD-3-Clause (numpy, scipy, scikit-learn, pandas, networkx, "
                    "sympy), matplotlib license (PSF-style)", log.as_dict())



# -- python_library ---------------------------------------------------------------------
# class name -> the distribution whose library modules it reads
PL_LIBRARIES = {"numpy": "numpy", "scipy": "scipy", "scikit-learn": "scikit-learn",
                "pandas": "pandas", "matplotlib": "matplotlib", "sympy": "sympy",
                "networkx": "networkx", "torch": "torch", "transformers": "transformers",
                "sphinx": "sphinx"}
PL_LICENSE = ("BSD-3-Clause (numpy, scipy, scikit-learn, pandas, networkx, sympy, "
              "torch), Apache-2.0 (transformers), BSD-2-Clause (sphinx), the "
              "matplotlib license (PSF-style)")


def _library_stream(cls, pkg, rng):
    dist = src.pinned(pkg)
    files = [(dist, p) for p in src.list_files(dist, ["*.py"]) if _is_library(p)]
    return [src.window_stream(files, rng, "hash", 2, middle=True)]


def build_python_library(name, n, seed):
    """Windows from the middle of library modules, labelled by the package."""
    log = src.SourceLog()
    per_class = windows_per_class(name, n, seed, PL_LIBRARIES, _library_stream, log)
    return Labelled(per_class, tuple(PL_LIBRARIES), "library",
                    "windows from the middle (after the imports, past the first 10%) "
                    "of the library modules (tests and vendored code left out) of "
                    "ten installed Python packages, labelled by the package",
                    PL_LICENSE, log.as_dict())
