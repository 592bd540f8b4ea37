"""A scikit-learn transformer from raw texts to ragged hidden states.

Grid searches clone a pipeline once per candidate and refit it on every fold,
so a naive text-to-activation step would run the language model
``n_candidates * n_folds`` times over the same texts. Two things prevent it:

* :meth:`TransformerActivations.__sklearn_clone__` clones every parameter
  except ``model`` and ``tokenizer``, which the clones *share* (the model is
  only read, never trained; sklearn's default clone would deep-copy it).
* a process-wide LRU cache maps ``(extraction key, text digest)`` to that
  text's activations, where the extraction key hashes the model (config and
  weight fingerprint), tokenizer, layers and options. Each distinct text is
  encoded once per process; later folds and candidates only gather cached
  rows. Its size is capped (:func:`set_memory_cache_limit`, 2 GiB by
  default). With ``n_jobs > 1`` each joblib worker keeps its own cache.
"""

import threading
from collections import OrderedDict

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone

from .._ragged import RaggedArray
from ._cache import spec_key, text_digests
from ._encoder import Encoder, check_texts
from ._extract import run_extraction

__all__ = ["TransformerActivations", "clear_memory_cache", "set_memory_cache_limit"]


class _MemoryCache:
    """Thread-safe LRU of per-text activations with a byte budget."""

    def __init__(self, max_bytes):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._items = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, arrays):
        size = sum(a.nbytes for a in arrays)
        with self._lock:
            if key in self._items or size > self.max_bytes:
                return
            self._items[key] = arrays
            self.nbytes += size
            self._evict()

    def _evict(self):
        while self.nbytes > self.max_bytes and self._items:
            _, old = self._items.popitem(last=False)
            self.nbytes -= sum(a.nbytes for a in old)

    def clear(self):
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def __len__(self):
        return len(self._items)


_MEMORY = _MemoryCache(2 << 30)


def clear_memory_cache():
    """Empty the in-memory activation cache shared by TransformerActivations.

    Every :class:`TransformerActivations` with ``memory_cache=True`` stores
    the activations of the texts it encodes in one process-wide LRU cache (2
    GiB by default), so that grid searches encode each text once. This frees
    it; the next ``transform`` encodes its texts again.

    See Also
    --------
    set_memory_cache_limit : Change the cache's size cap.
    TransformerActivations : The transformer that fills the cache.

    Examples
    --------
    >>> from sklearn_attnprobe.activations import clear_memory_cache
    >>> clear_memory_cache()
    """
    _MEMORY.clear()


def set_memory_cache_limit(n_bytes):
    """Cap the in-memory activation cache of TransformerActivations.

    Least recently used texts are evicted at once until the cache fits; a
    transform whose own activations exceed the cap is not cached at all.

    Parameters
    ----------
    n_bytes : int
        New cap in bytes, ``>= 0`` (0 disables caching).

    Returns
    -------
    old : int
        The previous cap in bytes.

    See Also
    --------
    clear_memory_cache : Empty the cache.
    TransformerActivations : The transformer that fills the cache.

    Examples
    --------
    >>> from sklearn_attnprobe.activations import set_memory_cache_limit
    >>> old = set_memory_cache_limit(512 * 2**20)  # 512 MiB
    >>> set_memory_cache_limit(old)  # back to the previous cap
    536870912
    """
    if int(n_bytes) < 0:
        raise ValueError("n_bytes must be >= 0")
    with _MEMORY._lock:
        old, _MEMORY.max_bytes = _MEMORY.max_bytes, int(n_bytes)
        _MEMORY._evict()
    return old


def _join(per_layer):
    """One RaggedArray from per-layer ones of equal lengths (features side by side)."""
    if len(per_layer) == 1:
        return per_layer[0]
    packed = [r if r.is_packed else r.pack() for r in per_layer]
    data = np.concatenate([r.data for r in packed], axis=1)
    return RaggedArray(data, packed[0].offsets)


class TransformerActivations(TransformerMixin, BaseEstimator):
    """Texts in, per-token hidden states of a Hugging Face model out.

    A stateless transformer: ``transform(list_of_str)`` returns a
    :class:`~sklearn_attnprobe.RaggedArray` of shape ``(n_texts, None,
    d_model)`` (``d_model * len(layer)`` when ``layer`` is a list: the layers'
    states side by side), ready for :class:`~sklearn_attnprobe.ActivationScaler`
    and the probes. ``fit`` only validates the parameters. Extraction is
    :func:`~sklearn_attnprobe.activations.extract_activations`; see it for the
    batching and padding rules.

    Inside :class:`~sklearn.model_selection.GridSearchCV` each distinct text
    is encoded once: clones share the model and an in-memory cache keyed by
    the texts' hashes (see the module docstring); ``cache_dir`` adds an
    on-disk cache that survives the process.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Shared, not copied, by :func:`sklearn.base.clone`.
    tokenizer : transformers.PreTrainedTokenizerBase
        Shared, not copied, by :func:`sklearn.base.clone`.
    layer : int or list of int, default=-1
        Hidden-state index (0 = embeddings, -1 = last layer) or several.
    max_length : int or None, default=None
        Truncate texts to this many tokens (special tokens included).
    drop_first_token : bool or "special", default=False
        ``True``: drop each text's first token, whatever it is (BOS /
        attention-sink tokens, whose norm is often ~100x the others; but with
        a tokenizer that adds no BOS, such as GPT-2's or SmolLM2's GGUF one,
        the first token is the text's first word). ``"special"``: drop it
        only where it is a special token of the tokenizer (BOS, CLS). Applied
        after truncation; :func:`token_strings` with ``return_dropped=True``
        shows what was dropped.
    dtype : {"float16", "float32", "float64"}, default="float16"
        Output dtype (the cast happens on the device).
    batch_size : int, default=32
        Texts per forward pass at most.
    max_batch_tokens : int or None, default=16384
        Padded tokens (texts x longest text) per forward pass at most.
    device : str, torch.device or None, default=None
        Move the model there (None: leave it where it is).
    add_special_tokens : bool, default=True
        Passed to the tokenizer (BOS, CLS/SEP...).
    cache_dir : str, path-like or None, default=None
        On-disk cache folder (memory-mapped shards, resumable).
    memory_cache : bool, default=True
        Use the process-wide in-memory cache of per-text activations.
    progress : bool or None, default=None
        tqdm bar (None: only on runs longer than 5 seconds).

    Attributes
    ----------
    layers_ : tuple of int
        ``layer`` as non-negative hidden-state indices (set by ``fit``).

    See Also
    --------
    extract_activations : The extraction as a function, one RaggedArray per
        layer.
    token_strings : The token strings that label each output row.
    clear_memory_cache : Empty the shared in-memory cache.
    set_memory_cache_limit : Change its size cap.

    Examples
    --------
    A tiny word-level tokenizer and a random two-layer BERT, built offline
    (with a real model, load both with ``from_pretrained``), in a pipeline
    from raw texts to an attention probe:

    >>> from sklearn.pipeline import Pipeline
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
    >>> from sklearn_attnprobe import ActivationScaler, AttentionProbeClassifier
    >>> from sklearn_attnprobe.activations import TransformerActivations
    >>> words = "[PAD] [UNK] the cat dog sat ran on a mat".split()
    >>> core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
    ...                                   unk_token="[UNK]"))
    >>> core.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]",
    ...                                     pad_token="[PAD]")
    >>> model = BertModel(BertConfig(vocab_size=len(words), hidden_size=16,
    ...                              num_hidden_layers=2, num_attention_heads=2,
    ...                              intermediate_size=32))
    >>> texts = ["the cat sat", "a dog ran", "the cat sat on a mat", "a dog"]
    >>> acts = TransformerActivations(model, tokenizer, layer=[1, 2], dtype="float32")
    >>> acts.fit_transform(texts).lengths, acts.layers_
    (array([3, 3, 6, 2]), (1, 2))
    >>> pipe = Pipeline([
    ...     ("acts", TransformerActivations(model, tokenizer, layer=-1)),
    ...     ("scale", ActivationScaler()),
    ...     ("probe", AttentionProbeClassifier(max_iter=20, random_state=0)),
    ... ])
    >>> pipe.fit(texts, ["cat", "dog", "cat", "dog"]).predict(["a cat"]).shape
    (1,)
    """

    def __init__(self, model, tokenizer, *, layer=-1, max_length=None,
                 drop_first_token=False, dtype="float16", batch_size=32,
                 max_batch_tokens=16384, device=None, add_special_tokens=True,
                 cache_dir=None, memory_cache=True, progress=None):
        self.model = model
        self.tokenizer = tokenizer
        self.layer = layer
        self.max_length = max_length
        self.drop_first_token = drop_first_token
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.device = device
        self.add_special_tokens = add_special_tokens
        self.cache_dir = cache_dir
        self.memory_cache = memory_cache
        self.progress = progress

    def __sklearn_clone__(self):
        params = self.get_params(deep=False)
        shared = {k: params.pop(k) for k in ("model", "tokenizer")}
        params = {k: clone(v, safe=False) for k, v in params.items()}
        return type(self)(**shared, **params)

    def _encoder(self):
        layers = self.layer
        if isinstance(layers, (list, tuple)) and len(layers) == 1:
            layers = layers[0]
        return Encoder(self.model, self.tokenizer, layers=layers,
                       max_length=self.max_length,
                       drop_first_token=self.drop_first_token, dtype=self.dtype,
                       add_special_tokens=self.add_special_tokens,
                       device=self.device)

    def _run(self, encoder, texts):
        return run_extraction(
            encoder, texts, batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens, cache_dir=self.cache_dir,
            progress=self.progress)

    def fit(self, X, y=None):
        """Validate the parameters and ``X``; encodes nothing.

        Parameters
        ----------
        X : sequence of str or None
            Texts, only checked to be strings.
        y : None
            Ignored.

        Returns
        -------
        self : TransformerActivations
        """
        if X is not None:
            check_texts(X)
        self.layers_ = self._encoder().layers
        return self

    def transform(self, X):
        """Hidden states of the texts ``X``.

        Parameters
        ----------
        X : sequence of str
            Texts (a list, a 1-D array, a pandas Series...).

        Returns
        -------
        RaggedArray of shape (n_texts, None, n_features)
        """
        texts = check_texts(X)
        encoder = self._encoder()
        if not self.memory_cache:
            return _join(self._run(encoder, texts))
        key = spec_key(encoder.spec())
        digests = text_digests(texts)
        found = {}
        todo = OrderedDict()  # digest -> text, missing texts without duplicates
        for d, t in zip(digests, texts):
            if d in found or d in todo:
                continue
            hit = _MEMORY.get((key, d))
            if hit is None:
                todo[d] = t
            else:
                found[d] = hit
        if todo:
            fresh = self._run(encoder, list(todo.values()))
            if len(todo) == len(texts):  # nothing cached, no duplicates
                self._remember(key, list(todo), fresh)
                return _join(fresh)
            for j, d in enumerate(todo):
                found[d] = tuple(np.array(r[j]) for r in fresh)
            self._remember(key, list(todo), fresh, found)
        per_layer = []
        lengths = np.array([found[d][0].shape[0] for d in digests], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for k in range(len(encoder.layers)):
            data = np.concatenate([found[d][k] for d in digests], axis=0)
            per_layer.append(RaggedArray(data, offsets))
        return _join(per_layer)

    @staticmethod
    def _remember(key, digests, fresh, copies=None):
        """Store fresh per-text arrays unless they alone exceed the budget."""
        if sum(r.n_tokens * r.d_model * r.dtype.itemsize for r in fresh) > _MEMORY.max_bytes:
            return
        for j, d in enumerate(digests):
            arrays = copies[d] if copies is not None else tuple(
                np.array(r[j]) for r in fresh)
            for a in arrays:
                a.flags.writeable = False
            _MEMORY.put((key, d), arrays)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.requires_fit = False
        tags.transformer_tags.preserves_dtype = []
        return tags
