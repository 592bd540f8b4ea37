"""Pure text helpers for the study's sources: English sentences, gettext
``.po`` catalogues, and windows of whole lines from source files.

Nothing here reads files; :mod:`benchmarks.study._sources` does, and hands the
decoded text to these functions.
"""

import ast
import re

__all__ = []

# placeholders in gettext strings: %s, %(name)s, %d, {name}, {0}
_PLACEHOLDER = re.compile(r"%\([^)]*\)[-#0 +]*\d*[sdirf]|%[-#0 +]*\d*[sdirf]|\{[^{}]*\}")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_URL = re.compile(r"https?://\S+")


# -- English prose -------------------------------------------------------------
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
