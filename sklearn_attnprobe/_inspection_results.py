"""The objects :func:`~sklearn_attnprobe.inspection.max_activating_examples` returns.

:class:`TokenExample` (one ranked token with its window of context) and
:class:`MaxActivatingExamples` (the ranked lists of every head, rendered by
:mod:`sklearn_attnprobe._inspection_html`). Both are public as
``sklearn_attnprobe.inspection.TokenExample`` and
``sklearn_attnprobe.inspection.MaxActivatingExamples``: their ``__module__``
says so, which keeps their documentation, doctests and pickles there.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._inspection_html import render_html, render_text

_PUBLIC_MODULE = "sklearn_attnprobe.inspection"


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
        Content score ``x_t @ q_h``: the attention logit without the
        position bias, comparable across texts.
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

    __module__ = _PUBLIC_MODULE

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

    __module__ = _PUBLIC_MODULE

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
