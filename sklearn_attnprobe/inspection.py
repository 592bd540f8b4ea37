"""Maximum activating examples of a fitted attention probe.

An :class:`~sklearn_attnprobe.AttentionProbeClassifier` computes, per head
``h`` and token ``t`` of a text, an attention logit ``x_t @ q_h +
slope_h * p_t`` (a content score plus a position bias), a softmax ``a_ht`` of
the logits over the text's tokens, and
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

import numpy as np
import torch

from ._inspection_results import MaxActivatingExamples, TokenExample
from ._inspection_scan import (
    RunningTop,
    class_signs,
    iter_block_stats,
    iter_sources,
    resolve_probe,
)

__all__ = [
    "MaxActivatingExamples",
    "TokenExample",
    "max_activating_examples",
    "token_contributions",
]

_RANK_BY = ("weight", "score")


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

    * tokens by attention weight ``a_ht`` (or content score ``x_t @ q_h``,
      see ``rank_by``);
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
        text's other tokens) or by the content score ``x_t @ q_h``
        (comparable across texts). The score leaves out the position bias
        ``slope_h * p_t``: the softmax fixes that term only up to a per-text
        constant (counting positions from the first token instead of the last
        fits the same probe), so ranking raw logits across texts would rank
        an arbitrary choice of anchor.
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
    pre, est = resolve_probe(probe)
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
    signs = class_signs(n_outputs, len(classes))
    n_lists = H * (1 + len(signs))
    top = RunningTop(n_lists, n_examples, max_per_text)

    n_texts = _n_texts(pre, X)
    tokens_checked = False
    seen = 0
    for index, source in iter_sources(est, pre, X):
        if not tokens_checked:
            if n_texts is None:
                n_texts = len(source)
            tokens = _check_tokens(tokens, n_texts)
            tokens_checked = True
        _check_token_lengths(tokens, index, source.lengths)
        seen += len(source)
        for block, scores, weights, contrib in iter_block_stats(est, source):
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
        for index, source in iter_sources(est, pre, X, needed):
            for block, scores, weights, contrib in iter_block_stats(est, source):
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
    pre, est = resolve_probe(probe)
    out, n = {}, 0
    binary = est.module_.value.shape[2] == 1
    for index, source in iter_sources(est, pre, X):
        n += len(source)
        for block, _, _, contrib in iter_block_stats(est, source):
            c = contrib.cpu().numpy()
            for j, i in enumerate(index[block.index].tolist()):
                T = int(block.lengths[j])
                per = c[j, :, :T].transpose(1, 0, 2)  # (T, H, C)
                out[i] = per[..., 0].copy() if binary else per.copy()
    return [out[i] for i in range(n)]
