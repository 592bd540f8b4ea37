"""Blockwise scan of a dataset through a fitted attention probe.

Used by :mod:`sklearn_attnprobe.inspection`: resolving the probe (possibly the
last step of a Pipeline), iterating over the data in validated sources and
padded blocks, computing each block's attention scores, weights and per-class
contributions in float64 through the probe's own kernels, and keeping running
top-k lists of the tokens, so memory stays bounded whatever the dataset size.
"""

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ._attention import AttentionProbeClassifier
from ._cv import AttentionProbeClassifierCV
from ._kernels import masked_softmax
from ._streaming import iter_blocks
from ._ragged import RaggedArray
from ._numerics import flush_denormal
from ._validation import validate_ragged

# Padded float64 values per block of the scan (the block itself; the
# per-token values and contributions are sized from it, see _max_elements).
_SCAN_ELEMENTS = 1 << 22
# Texts transformed at a time through the steps before the probe of a
# Pipeline, so a scan never holds the whole transformed dataset.
_PIPELINE_CHUNK = 2048


# -- resolving the probe and iterating over the data ------------------------------
def resolve_probe(probe):
    """``(steps before the probe or None, fitted AttentionProbeClassifier)``."""
    final, pre = probe, None
    if isinstance(probe, Pipeline):
        final = probe.steps[-1][1]
        if len(probe.steps) > 1:
            pre = probe[:-1]
    if isinstance(final, AttentionProbeClassifierCV):
        check_is_fitted(final)
        best = getattr(final, "best_estimator_", None)
        if best is None:
            raise TypeError(
                f"{type(final).__name__} was fitted with refit=False: it has no "
                "best_estimator_ to inspect; refit it, or pass one of its models"
            )
        final = best
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


def iter_sources(est, pre, X, index=None):
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

    The weights are the softmax (:func:`masked_softmax`) of the module's full
    logits (``AttentionProbeModule.attention_scores``, position bias
    included); the scores are the content part ``x_t @ q_h`` alone
    (``content_scores``), which ranks tokens across texts without depending on
    where positions are counted from.
    """
    x = block.x  # already float64
    weights = masked_softmax(module.attention_scores(block), block.mask, block.padding())
    scores = module.content_scores(block)
    k, T, d = x.shape
    value = module.value.detach().to(x.dtype)  # (H, d, C)
    H, _, C = value.shape
    per_token = (x.reshape(k * T, d) @ value.permute(1, 0, 2).reshape(d, H * C))
    per_token = per_token.view(k, T, H, C).permute(0, 2, 1, 3)  # (k, H, T, C)
    return scores, weights, weights[..., None] * per_token


def iter_block_stats(est, source):
    """Yield ``(block, scores, weights, contributions)`` over a source."""
    module = est.module_
    device = next(module.parameters()).device  # where the fitted probe lives
    module.eval()
    with torch.no_grad(), flush_denormal():
        for block in iter_blocks(source, torch.float64, device,
                                 max_elements=_max_elements(module)):
            yield (block, *_block_stats(module, block))


def class_signs(n_outputs, n_classes):
    """Per ranked contribution list: (output column, sign) giving class c's logit.

    Binary probes have one output, the log-odds ``z`` of ``classes_[1]``;
    the log-odds of ``classes_[0]`` is ``-z``, so its contributions are the
    negated ones.
    """
    if n_outputs == 1:
        return [(0, -1.0), (0, 1.0)]
    return [(c, 1.0) for c in range(n_classes)]


# -- running top-k -------------------------------------------------------------
class RunningTop:
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
