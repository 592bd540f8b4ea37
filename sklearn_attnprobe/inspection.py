"""Maximum activating examples of a fitted attention probe.

An :class:`~sklearn_attnprobe.AttentionProbeClassifier` computes, per head
``h`` and token ``t`` of a text, an attention score ``s_ht = x_t @ q_h +
slope_h * p_t``, a softmax ``a_ht`` of the scores over the text's tokens, and
class logits ``sum_h sum_t a_ht * (x_t @ V_h) + b``. Token ``t`` therefore
adds ``a_ht * (x_t @ V_h)[c]`` to the logit of class ``c`` through head ``h``:
its *contribution*. Summed over tokens and heads, plus the intercept, the
contributions give back :meth:`~sklearn_attnprobe.AttentionProbeClassifier.decision_function`
exactly.

:func:`max_activating_examples` scans a dataset block by block and keeps, for
every head, the tokens with the highest attention and the tokens with the
highest contribution to each class, each with a window of surrounding token
strings; :class:`MaxActivatingExamples` renders them as plain text or as one
self-contained HTML page. :func:`token_contributions` returns every token's
contributions for a (small) set of texts.
"""

import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ._attention import AttentionProbeClassifier
from ._cv import AttentionProbeClassifierCV
from ._inspection_html import render_html, render_text
from ._kernels import attention_logits, masked_softmax
from ._packing import iter_blocks
from ._ragged import RaggedArray
from ._training import flush_denormal
from ._validation import validate_ragged

__all__ = [
    "MaxActivatingExamples",
    "TokenExample",
    "max_activating_examples",
    "token_contributions",
]

# Padded float64 values per block of the scan (the block itself; the
# per-token values and contributions are sized from it, see _max_elements).
_SCAN_ELEMENTS = 1 << 22
# Texts transformed at a time through the steps before the probe of a
# Pipeline, so a scan never holds the whole transformed dataset.
_PIPELINE_CHUNK = 2048
_RANK_BY = ("weight", "score")


# -- resolving the probe and iterating over the data ------------------------------
def _resolve_probe(probe):
    """``(steps before the probe or None, fitted AttentionProbeClassifier)``."""
    final, pre = probe, None
    if isinstance(probe, Pipeline):
        final = probe.steps[-1][1]
        if len(probe.steps) > 1:
            pre = probe[:-1]
    if isinstance(final, AttentionProbeClassifierCV):
        check_is_fitted(final)
        final = final._best()
    elif isinstance(final, AttentionProbeClassifier):
        check_is_fitted(final)
    else:
        raise TypeError(
            "probe must be a fitted AttentionProbeClassifier (or "
            "AttentionProbeClassifierCV), or a Pipeline ending with one; got "
            f"{type(final).__name__}"
            + (" as the Pipeline's last step" if final is not probe else "")
        )
    return pre, final


def _take(X, idx):
    """Texts ``idx`` of any input form (list, array, RaggedArray, pandas)."""
    if isinstance(X, (RaggedArray, np.ndarray)):
        return X[idx]
    if hasattr(X, "iloc"):
        return X.iloc[idx]
    return [X[i] for i in idx]


def _iter_sources(est, pre, X, index=None):
    """Yield ``(global text indices, validated text source)`` pieces of ``X``.

    Without preprocessing steps the whole input is one source (its blocks
    bound the memory); with them, texts go through ``pre.transform`` in
    chunks of ``_PIPELINE_CHUNK``.
    """
    if pre is None:
        source = validate_ragged(est, X, reset=False)
        if index is None:
            yield np.arange(len(source)), source
        else:
            yield index, source[index]
        return
    if index is None:
        index = np.arange(len(X))
    for start in range(0, len(index), _PIPELINE_CHUNK):
        idx = index[start : start + _PIPELINE_CHUNK]
        yield idx, validate_ragged(est, pre.transform(_take(X, idx)), reset=False)


def _max_elements(module):
    """Block size such that the block's per-token tensors stay ~_SCAN_ELEMENTS."""
    H, d, C = module.value.shape
    per_token = d + H * (C + 3)
    return max(d, _SCAN_ELEMENTS * d // per_token)


def _block_stats(module, block):
    """float64 ``(k, H, T)`` scores and weights, ``(k, H, T, C)`` contributions.

    The scores and the softmax go through the probe's own kernels
    (:func:`attention_logits`, :func:`masked_softmax`), in float64.
    """
    x = block.x  # already float64
    query = module.query.detach().to(x.dtype)
    if module.position is None:
        slope = positions = None
    else:
        slope = module.slope.detach().to(x.dtype)
        positions = block.positions(module.position, x.dtype)
    scores = attention_logits(x, block.lengths, query, slope, module.position,
                              positions=positions)
    weights = masked_softmax(scores, block.mask, block.padding())
    k, T, d = x.shape
    value = module.value.detach().to(x.dtype)  # (H, d, C)
    H, _, C = value.shape
    per_token = (x.reshape(k * T, d) @ value.permute(1, 0, 2).reshape(d, H * C))
    per_token = per_token.view(k, T, H, C).permute(0, 2, 1, 3)  # (k, H, T, C)
    return scores, weights, weights[..., None] * per_token


def _iter_blocks(est, source):
    """Yield ``(block, scores, weights, contributions)`` over a source."""
    module = est.module_
    device = est._module_placement()[1]
    module.eval()
    with torch.no_grad(), flush_denormal():
        for block in iter_blocks(source, torch.float64, device,
                                 max_elements=_max_elements(module)):
            yield (block, *_block_stats(module, block))


def _class_signs(n_outputs, n_classes):
    """Per ranked contribution list: (output column, sign) giving class c's logit.

    Binary probes have one output, the log-odds ``z`` of ``classes_[1]``;
    the log-odds of ``classes_[0]`` is ``-z``, so its contributions are the
    negated ones.
    """
    if n_outputs == 1:
        return [(0, -1.0), (0, 1.0)]
    return [(c, 1.0) for c in range(n_classes)]


# -- running top-k -------------------------------------------------------------
class _RunningTop:
    """The ``n`` largest values of each of ``L`` ranked lists seen so far."""

    def __init__(self, n_lists, n, per_text):
        self.n, self.per_text = n, per_text
        self.values = torch.empty(n_lists, 0, dtype=torch.float64)
        self.texts = torch.empty(n_lists, 0, dtype=torch.int64)
        self.tokens = torch.empty(n_lists, 0, dtype=torch.int64)

    def update(self, rank, texts):
        """``rank`` (k, L, T), -inf where excluded; ``texts`` (k,) global ids."""
        k, L, T = rank.shape
        m = min(T, self.n if self.per_text is None else min(self.per_text, self.n))
        v, tok = torch.topk(rank, m, dim=2)  # best m tokens of each text
        v = v.permute(1, 0, 2).reshape(L, k * m).cpu()
        tok = tok.permute(1, 0, 2).reshape(L, k * m).cpu()
        txt = torch.as_tensor(np.repeat(texts, m))[None, :].expand(L, k * m)
        values = torch.cat([self.values, v], dim=1)
        keep = min(self.n, values.shape[1])
        self.values, pos = torch.topk(values, keep, dim=1)
        self.texts = torch.cat([self.texts, txt], dim=1).gather(1, pos)
        self.tokens = torch.cat([self.tokens, tok], dim=1).gather(1, pos)

    def entries(self, row):
        """Finite ``(value, text, token)`` triples of list ``row``, best first."""
        out = []
        for v, i, t in zip(self.values[row].tolist(), self.texts[row].tolist(),
                           self.tokens[row].tolist()):
            if np.isfinite(v):
                out.append((v, i, t))
        return out


# -- public objects --------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TokenExample:
    """One ranked token of :class:`MaxActivatingExamples`, with its context.

    Parameters
    ----------
    head : int
        Attention head.
    text : int
        Index of the text in the ``X`` that was scanned.
    token : int
        Index of the token in that text (row of its activations).
    value : float
        What the list is ranked by: the attention weight or score for the
        attention lists, the contribution to the list's class for the
        contribution lists.
    weight : float
        Attention weight ``a_ht`` of the token (its text's weights sum to 1).
    score : float
        Attention score ``s_ht`` (logit before the softmax, position bias
        included).
    contribution : float or ndarray of shape (n_classes,)
        What the token adds to :meth:`decision_function` through this head:
        a float (the log-odds of ``classes_[1]``) for binary probes, one value
        per class otherwise.
    start : int
        Index in the text of the window's first token.
    n_tokens : int
        Length of the text.
    window_tokens : tuple of str
        Token strings ``tokens[text][start : start + len(window_tokens)]``.
    window_values : ndarray of shape (len(window_tokens),)
        The value shown on each window token: attention weights for the
        attention lists, contributions to the list's class for the
        contribution lists.

    See Also
    --------
    MaxActivatingExamples : Holds the ranked lists of these.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_attnprobe.inspection import TokenExample
    >>> ex = TokenExample(head=0, text=3, token=2, value=0.9, weight=0.9,
    ...                   score=4.0, contribution=1.5, start=0, n_tokens=5,
    ...                   window_tokens=("a", "b", "c", "d"),
    ...                   window_values=np.array([0.02, 0.03, 0.9, 0.05]))
    >>> ex.focus, ex.window_tokens[ex.focus]
    (2, 'c')
    """

    head: int
    text: int
    token: int
    value: float
    weight: float
    score: float
    contribution: object
    start: int
    n_tokens: int
    window_tokens: tuple
    window_values: np.ndarray

    @property
    def focus(self):
        """Position of the ranked token inside the window."""
        return self.token - self.start


class MaxActivatingExamples:
    """Per head, the tokens with the highest attention and contributions.

    Built by :func:`max_activating_examples`; not meant to be created
    directly.

    Parameters
    ----------
    attention : list of list of TokenExample
        Per head, the tokens ranked by attention, best first.
    contributions : list of dict
        Per head, a dict mapping each class label (of ``classes``) to its
        tokens ranked by contribution to that class, best first.
    classes : ndarray of shape (n_classes,)
        The probe's ``classes_``.
    class_names : list of str
        Display name of each class.
    n_texts : int
        Number of texts scanned.
    context : int
        Tokens of context on each side of a ranked token.
    rank_by : {"weight", "score"}
        What the attention lists are ranked by.
    intercept : ndarray of shape (n_outputs,)
        The probe's intercept (``module_.bias``); one output for binary
        probes.

    Attributes
    ----------
    n_heads : int
        Number of attention heads.

    See Also
    --------
    max_activating_examples : Builds this object.
    TokenExample : One entry of the ranked lists.

    Examples
    --------
    >>> from sklearn_attnprobe import AttentionProbeClassifier
    >>> from sklearn_attnprobe.datasets import make_planted_task
    >>> from sklearn_attnprobe.inspection import max_activating_examples
    >>> X, y = make_planted_task("needle", n_texts=100, random_state=0)
    >>> probe = AttentionProbeClassifier(max_iter=100, random_state=0).fit(X, y)
    >>> found = max_activating_examples(probe, X, n_examples=3, context=2)
    >>> found.n_heads, len(found.attention[0]), sorted(found.contributions[0])
    (1, 3, [0, 1])
    >>> html = found.to_html()
    >>> html.startswith("<!DOCTYPE html>"), "<script" in html
    (True, False)
    """

    def __init__(self, attention, contributions, *, classes, class_names, n_texts,
                 context, rank_by, intercept):
        self.attention = attention
        self.contributions = contributions
        self.classes = classes
        self.class_names = class_names
        self.n_texts = n_texts
        self.context = context
        self.rank_by = rank_by
        self.intercept = intercept

    @property
    def n_heads(self):
        """Number of attention heads of the probe."""
        return len(self.attention)

    def __repr__(self):
        n = max((len(a) for a in self.attention), default=0)
        return (f"MaxActivatingExamples(n_heads={self.n_heads}, "
                f"n_classes={len(self.classes)}, n_examples={n}, "
                f"n_texts={self.n_texts}, context={self.context})")

    def to_text(self):
        """Plain-text report: per head, the ranked lists with their context.

        The ranked token is shown as ``[[token]]``; ``...`` marks a window
        cut short of its text's start or end.

        Returns
        -------
        report : str
        """
        return render_text(self)

    def to_html(self):
        """The report as one self-contained HTML page.

        Inline CSS only (no scripts, fonts or other external resources).
        Every window token is shaded by its value relative to the largest
        in the window (orange: attention; blue: contribution towards the
        list's class, red: against it), with the exact value as a tooltip;
        the ranked token is outlined. Token strings are HTML-escaped.

        Returns
        -------
        page : str
        """
        return render_html(self, full_page=True)

    def _repr_html_(self):  # Jupyter
        return render_html(self, full_page=False)

    def save_html(self, path):
        """Write :meth:`to_html` to a file (UTF-8).

        Parameters
        ----------
        path : str or path-like
            Destination file; overwritten if it exists.

        Returns
        -------
        path : pathlib.Path
            The file written.
        """
        path = Path(path)
        path.write_text(self.to_html(), encoding="utf-8")
        return path


# -- validation helpers ------------------------------------------------------------
def _check_int(value, name, low, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < low:
        raise ValueError(f"{name} must be an integer >= {low}"
                         f"{' or None' if allow_none else ''}; got {value!r}")
    return int(value)


def _check_tokens(tokens, n_texts):
    if tokens is None:
        return None
    if isinstance(tokens, (str, bytes)):
        raise TypeError("tokens must be a list (one entry per text) of lists of "
                        "token strings, not a single string")
    tokens = list(tokens)
    if len(tokens) != n_texts:
        raise ValueError(f"tokens has {len(tokens)} entries but X has {n_texts} "
                         "texts; pass one list of token strings per text")
    return tokens


def _check_token_lengths(tokens, index, lengths):
    if tokens is None:
        return
    for i, T in zip(index.tolist(), lengths.tolist()):
        if isinstance(tokens[i], (str, bytes)):
            raise TypeError(f"tokens[{i}] is a single string; each entry must be "
                            "a list of token strings")
        if len(tokens[i]) != T:
            raise ValueError(
                f"text {i} has {T} token(s) in X but tokens[{i}] has "
                f"{len(tokens[i])}; the token strings must match the rows of "
                "the activations (same tokenizer, truncation and first-token "
                "dropping, see sklearn_attnprobe.activations.token_strings)")


def _n_texts(pre, X):
    if pre is None:
        return None  # known once validated
    try:
        return len(X)
    except TypeError:
        raise TypeError(f"X must be a sequence of texts; got {type(X).__name__}") \
            from None


# -- public functions ------------------------------------------------------------
def max_activating_examples(probe, X, tokens=None, *, n_examples=10, context=10,
                            max_per_text=1, rank_by="weight", class_names=None):
    """Per head, the tokens with the highest attention and class contributions.

    Scans ``X`` block by block through the probe's own packing and kernels,
    keeping only running top lists, so memory stays bounded whatever the
    size of ``X`` (no tokens x heads x classes array of the dataset is ever
    built). For every head ``h`` it ranks

    * tokens by attention weight ``a_ht`` (or score ``s_ht``, see
      ``rank_by``);
    * for every class ``c``, tokens by their contribution
      ``a_ht * (x_t @ V_h)[c]`` to the logit of ``c``. Binary probes have one
      logit, the log-odds ``z`` of ``classes_[1]``: its list holds the
      largest contributions to ``z``, and that of ``classes_[0]`` the
      largest to ``-z`` (the most negative to ``z``).

    Parameters
    ----------
    probe : AttentionProbeClassifier, AttentionProbeClassifierCV or Pipeline
        A fitted probe, or a fitted :class:`~sklearn.pipeline.Pipeline` whose
        last step is one; ``X`` then goes through the earlier steps' ``transform``
        (in chunks of texts).
    X : list of ndarray of shape (T_i, d_model), RaggedArray or array
        Texts in any form the probe (or the pipeline) accepts.
    tokens : list of list of str or None, default=None
        Token strings of each text, one per row of its activations (see
        :func:`sklearn_attnprobe.activations.token_strings`). None shows the
        token index as ``<t>``.
    n_examples : int, default=10
        Length of each ranked list.
    context : int, default=10
        Tokens shown on each side of a ranked token.
    max_per_text : int or None, default=1
        At most this many tokens of one text in each list (1: every entry is
        a different text); None for no limit.
    rank_by : {"weight", "score"}, default="weight"
        Rank the attention lists by the weight ``a_ht`` (relative to the
        text's other tokens) or by the score ``s_ht`` (comparable across
        texts).
    class_names : sequence of str or None, default=None
        Display names of ``probe.classes_``; None uses ``str`` of each label.

    Returns
    -------
    examples : MaxActivatingExamples
        The ranked lists, with ``to_text``, ``to_html`` and ``save_html``.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If the probe is not fitted.
    TypeError
        If ``probe`` is not an attention probe (or a pipeline ending in one).
    ValueError
        If ``n_examples < 1``, ``tokens`` does not match ``X``, or ``X`` is
        not valid input for the probe.

    See Also
    --------
    token_contributions : Every token's contributions, text by text.
    sklearn_attnprobe.AttentionProbeClassifier.attention_weights : Every
        token's attention weights.

    Examples
    --------
    >>> from sklearn_attnprobe import AttentionProbeClassifier
    >>> from sklearn_attnprobe.datasets import make_planted_task
    >>> from sklearn_attnprobe.inspection import max_activating_examples
    >>> X, y = make_planted_task("needle", n_texts=100, random_state=0)
    >>> probe = AttentionProbeClassifier(max_iter=100, random_state=0).fit(X, y)
    >>> tokens = [[f"w{t}" for t in range(len(x))] for x in X]
    >>> found = max_activating_examples(probe, X, tokens, n_examples=3, context=1)
    >>> top = found.attention[0][0]
    >>> len(top.window_tokens) <= 3, top.window_tokens[top.focus] == f"w{top.token}"
    (True, True)
    >>> print(found.to_text().splitlines()[0])
    Maximum activating examples: 1 head(s), 100 texts, 2 classes, context 1
    """
    pre, est = _resolve_probe(probe)
    n_examples = _check_int(n_examples, "n_examples", 1)
    context = _check_int(context, "context", 0)
    max_per_text = _check_int(max_per_text, "max_per_text", 1, allow_none=True)
    if rank_by not in _RANK_BY:
        raise ValueError(f"rank_by must be one of {_RANK_BY}; got {rank_by!r}")
    classes = est.classes_
    if class_names is None:
        class_names = [str(c) for c in classes]
    else:
        class_names = [str(c) for c in class_names]
        if len(class_names) != len(classes):
            raise ValueError(f"class_names has {len(class_names)} names but the "
                             f"probe has {len(classes)} classes")
    module = est.module_
    H, _, n_outputs = module.value.shape
    signs = _class_signs(n_outputs, len(classes))
    n_lists = H * (1 + len(signs))
    top = _RunningTop(n_lists, n_examples, max_per_text)

    n_texts = _n_texts(pre, X)
    tokens_checked = False
    seen = 0
    for index, source in _iter_sources(est, pre, X):
        if not tokens_checked:
            if n_texts is None:
                n_texts = len(source)
            tokens = _check_tokens(tokens, n_texts)
            tokens_checked = True
        _check_token_lengths(tokens, index, source.lengths)
        seen += len(source)
        for block, scores, weights, contrib in _iter_blocks(est, source):
            pad = block.padding()[:, None, :]
            att = weights if rank_by == "weight" else scores
            ranked = [att] + [sign * contrib[..., col] for col, sign in signs]
            # (k, L, T): list h for attention, H + j * H + h for class list j
            rank = torch.cat(ranked, dim=1).masked_fill(pad, float("-inf"))
            top.update(rank, index[block.index])

    # second pass over the few texts that made a list: their windows
    rows = [top.entries(r) for r in range(n_lists)]
    needed = np.unique([i for r in rows for _, i, _ in r]).astype(np.int64)
    per_text = {}
    if len(needed):
        for index, source in _iter_sources(est, pre, X, needed):
            for block, scores, weights, contrib in _iter_blocks(est, source):
                for j, i in enumerate(index[block.index].tolist()):
                    T = int(block.lengths[j])
                    per_text[i] = (scores[j, :, :T].cpu().numpy(),
                                   weights[j, :, :T].cpu().numpy(),
                                   contrib[j, :, :T].cpu().numpy())

    def make(head, value, i, t, shade):
        s, w, c = per_text[i]
        T = w.shape[1]
        start, stop = max(0, t - context), min(T, t + context + 1)
        if tokens is None:
            window = tuple(f"<{u}>" for u in range(start, stop))
        else:
            window = tuple(str(tok) for tok in tokens[i][start:stop])
        contribution = float(c[head, t, 0]) if n_outputs == 1 else c[head, t].copy()
        return TokenExample(
            head=head, text=int(i), token=int(t), value=float(value),
            weight=float(w[head, t]), score=float(s[head, t]),
            contribution=contribution, start=start, n_tokens=T,
            window_tokens=window, window_values=shade(s, w, c)[start:stop].copy())

    attention = [
        [make(h, v, i, t, lambda s, w, c, h=h: w[h]) for v, i, t in rows[h]]
        for h in range(H)
    ]
    contributions = []
    for h in range(H):
        per_class = {}
        for j, (col, sign) in enumerate(signs):
            row = rows[H + j * H + h]
            label = classes[j]
            label = label.item() if isinstance(label, np.generic) else label
            per_class[label] = [
                make(h, v, i, t, lambda s, w, c, h=h, col=col, sign=sign: sign * c[h, :, col])
                for v, i, t in row
            ]
        contributions.append(per_class)
    return MaxActivatingExamples(
        attention, contributions, classes=classes, class_names=class_names,
        n_texts=int(seen), context=context, rank_by=rank_by,
        intercept=module.bias.detach().double().cpu().numpy())


def token_contributions(probe, X):
    """What every token adds to the decision function, per head.

    Token ``t`` of a text adds ``a_ht * (x_t @ V_h)`` to the class logits
    through head ``h``; summed over tokens and heads, plus the intercept
    (``probe.module_.bias``), this is :meth:`decision_function`. Computed in
    float64 through the probe's own kernels. The result holds one value per
    token, head and class for every text: use it on a few texts, and
    :func:`max_activating_examples` to scan a dataset.

    Parameters
    ----------
    probe : AttentionProbeClassifier, AttentionProbeClassifierCV or Pipeline
        A fitted probe, or a fitted Pipeline whose last step is one.
    X : list of ndarray of shape (T_i, d_model), RaggedArray or array
        Texts in any form the probe (or the pipeline) accepts.

    Returns
    -------
    contributions : list of ndarray
        Per text, shape ``(T_i, n_heads)`` for binary probes (contributions
        to the log-odds of ``classes_[1]``, as :meth:`decision_function`), else
        ``(T_i, n_heads, n_classes)``.

    See Also
    --------
    max_activating_examples : The top contributions over a whole dataset.
    sklearn_attnprobe.AttentionProbeClassifier.attention_weights : The
        attention weights ``a_ht`` alone.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_attnprobe import AttentionProbeClassifier
    >>> from sklearn_attnprobe.datasets import make_planted_task
    >>> from sklearn_attnprobe.inspection import token_contributions
    >>> X, y = make_planted_task("needle", n_texts=100, random_state=0)
    >>> probe = AttentionProbeClassifier(n_heads=2, max_iter=50,
    ...                                  random_state=0).fit(X, y)
    >>> contrib = token_contributions(probe, X[:3])
    >>> contrib[0].shape == (len(X[0]), probe.n_heads)
    True
    >>> total = np.array([c.sum() for c in contrib]) + probe.module_.bias.item()
    >>> np.allclose(total, probe.decision_function(X[:3]), atol=1e-4)
    True
    """
    pre, est = _resolve_probe(probe)
    out, n = {}, 0
    binary = est.module_.value.shape[2] == 1
    for index, source in _iter_sources(est, pre, X):
        n += len(source)
        for block, _, _, contrib in _iter_blocks(est, source):
            c = contrib.cpu().numpy()
            for j, i in enumerate(index[block.index].tolist()):
                T = int(block.lengths[j])
                per = c[j, :, :T].transpose(1, 0, 2)  # (T, H, C)
                out[i] = per[..., 0].copy() if binary else per.copy()
    return [out[i] for i in range(n)]
