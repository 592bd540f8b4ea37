"""Built-in planted-signal tasks: synthetic activations with a known answer.

Each task hides a class signal in Gaussian token activations where one kind of
probe should find it best:

* ``"needle"``: one token at a random position carries a marker direction
  plus the class direction; attention can find it, mean pooling dilutes it by
  the text length, the last token rarely holds it.
* ``"shift"``: every token is shifted a little along the class direction;
  averaging over tokens accumulates the evidence, a single token has little.
* ``"last"``: only the last token carries the class; last-token pooling reads
  it directly, averaging dilutes it.
"""

import numpy as np
from sklearn.utils import check_random_state

from ._ragged import RaggedArray

__all__ = ["make_planted_task", "PLANTED_TASKS"]

PLANTED_TASKS = ("needle", "shift", "last")


def make_planted_task(task, *, n_texts=500, d_model=32, n_classes=2, min_length=8,
                      max_length=48, signal=None, dtype=np.float32,
                      return_ragged=False, random_state=None):
    """Synthetic per-token activations with a planted class signal.

    Parameters
    ----------
    task : {"needle", "shift", "last"}
        Where the signal sits (see the module docstring).
    n_texts : int, default=500
        Number of texts.
    d_model : int, default=32
        Width of each token vector.
    n_classes : int, default=2
        Number of classes; the labels are balanced (``i % n_classes`` in
        random order).
    min_length, max_length : int, default=8, 48
        Text lengths are drawn uniformly from ``[min_length, max_length]``.
    signal : float or None, default=None
        Signal strength; None picks a default per task (needle 3.0,
        shift 0.35, last 2.0) where the intended probe wins clearly.
    dtype : numpy dtype, default=np.float32
        Dtype of the activations.
    return_ragged : bool, default=False
        Return a :class:`RaggedArray` instead of a list of arrays.
    random_state : int, RandomState instance or None, default=None
        Seeds everything (directions, labels, lengths, noise, needle
        positions); an int gives the same task on every call.

    Returns
    -------
    X : list of ndarray of shape (T_i, d_model), or RaggedArray
        Per-token activations of each text: standard normal noise plus the
        planted signal.
    y : ndarray of shape (n_texts,) of int
        Class of each text, in ``range(n_classes)``.

    See Also
    --------
    sklearn_attnprobe.AttentionProbeClassifier : Should win on ``"needle"``.
    sklearn_attnprobe.MeanProbeClassifier : Should win on ``"shift"``.
    sklearn_attnprobe.LastTokenProbeClassifier : Should win on ``"last"``.

    Examples
    --------
    >>> from sklearn_attnprobe.datasets import make_planted_task
    >>> X, y = make_planted_task("needle", n_texts=4, d_model=8, random_state=0)
    >>> len(X), X[0].shape[1], sorted(set(y.tolist())) == [0, 1]
    (4, 8, True)
    """
    if task not in PLANTED_TASKS:
        raise ValueError(f"task must be one of {PLANTED_TASKS}; got {task!r}")
    if not 1 <= min_length <= max_length:
        raise ValueError("need 1 <= min_length <= max_length")
    if n_classes < 2 or n_texts < n_classes:
        raise ValueError("need n_classes >= 2 and n_texts >= n_classes")
    defaults = {"needle": 3.0, "shift": 0.35, "last": 2.0}
    signal = defaults[task] if signal is None else float(signal)
    rng = check_random_state(random_state)
    directions = rng.standard_normal((n_classes + 1, d_model))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    marker, class_dirs = directions[0], directions[1:]
    # balanced labels in random order
    y = rng.permutation(np.arange(n_texts) % n_classes)
    lengths = rng.randint(min_length, max_length + 1, size=n_texts)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    data = rng.standard_normal((offsets[-1], d_model))
    if task == "shift":
        data += signal * np.repeat(class_dirs[y], lengths, axis=0)
    else:
        if task == "needle":
            where = offsets[:-1] + (rng.random_sample(n_texts) * lengths).astype(int)
            planted = signal * (marker + class_dirs[y])
        else:
            where = offsets[1:] - 1
            planted = signal * class_dirs[y]
        data[where] += planted
    X = RaggedArray(data.astype(dtype), offsets)
    return (X if return_ragged else X.to_list()), y
