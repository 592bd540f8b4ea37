"""Hidden states of Hugging Face ``transformers`` models as ragged activations.

Optional part of the package (``pip install "sklearn-attnprobe[hf]"``):
nothing here imports ``transformers``; you pass a model and a tokenizer you
loaded yourself, so ``import sklearn_attnprobe`` never needs the extra.

- :func:`extract_activations`: texts -> one
  :class:`~sklearn_attnprobe.RaggedArray` per layer, batched by length,
  padding never returned, optionally streamed to a resumable on-disk cache
  of memory-mapped ``.npy`` shards.
- :class:`TransformerActivations`: the same as a scikit-learn transformer,
  so ``Pipeline([("acts", TransformerActivations(model, tok, layer=6)),
  ("scale", ActivationScaler()), ("probe", AttentionProbeClassifier())])``
  goes from raw texts to predictions and works inside ``GridSearchCV``
  without re-encoding the texts for every candidate.
- :func:`token_strings`: the token strings of each text, one per row of its
  activations (same tokenization as the extraction), for showing attention
  weights or :mod:`sklearn_attnprobe.inspection` reports over words.
"""

from ._extract import extract_activations
from ._tokens import token_strings
from ._transformer import (
    TransformerActivations,
    clear_memory_cache,
    set_memory_cache_limit,
)

__all__ = [
    "TransformerActivations",
    "clear_memory_cache",
    "extract_activations",
    "set_memory_cache_limit",
    "token_strings",
]
