"""Batched extraction of per-token hidden states from a Hugging Face model.

How a run goes:

1. Texts are tokenized without padding (optionally truncated to
   ``max_length``), so every text's true token count is known.
2. Texts are sorted by length (longest first) and cut into batches of at
   most ``batch_size`` texts and ``max_batch_tokens`` padded tokens, so a
   batch holds texts of nearly equal length and padding is small.
3. Each batch is padded on the right, whatever the tokenizer's
   ``padding_side`` (see :mod:`._encoder` for why).
4. One forward pass under :func:`torch.inference_mode` returns all hidden
   states; the rows of real tokens (minus the first one with
   ``drop_first_token=True``) of the chosen layers are cast to the output
   dtype on the device and written, in the original text order, into one
   buffer per layer: a numpy array, or a memory-mapped shard file of the
   on-disk cache (:mod:`._cache`).
"""

import threading
import warnings

import numpy as np
import torch

from .._ragged import RaggedArray
from . import _cache
from ._encoder import Encoder, check_texts, positive_int
from ._hf_compat import ensure_capture_registry, remove_capture_hooks

__all__ = ["extract_activations"]

HF_HINT = 'pip install "sklearn-attnprobe[hf]"'
# one extraction at a time per process: threads (joblib's threading backend)
# would otherwise race on the model's eval/train mode and capture hooks
_LOCK = threading.RLock()


def _progress_bar(progress, total, initial=0):
    if progress is False or total - initial <= 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise ImportError(f"progress=True needs tqdm: {HF_HINT}") from None
        return None
    # progress=None: the bar only appears on runs that last over 5 seconds
    return tqdm(total=total, initial=initial, unit="text", desc="activations",
                delay=0 if progress else 5, leave=bool(progress))


def _warn_non_finite(bad):
    if bad:
        warnings.warn(
            f"{bad} activation values overflowed float16 (|x| > 65504) and "
            "became inf; use dtype='float32' or drop_first_token=True (the "
            "first token is often a huge-norm attention sink)", RuntimeWarning,
            stacklevel=5)


def run_extraction(encoder, texts, *, batch_size=32, max_batch_tokens=16384,
                   cache_dir=None, shard_size=2048, progress=None):
    """Encode ``texts`` (validated strs); list of one RaggedArray per layer."""
    batch_size = positive_int(batch_size, "batch_size")
    max_batch_tokens = positive_int(max_batch_tokens, "max_batch_tokens",
                                     allow_none=True)
    shard_size = positive_int(shard_size, "shard_size")
    model = encoder.model
    with _LOCK:
        # outside inference mode: parameters moved there would become
        # inference tensors and the model could no longer be trained
        device = encoder.prepare()
        was_training = model.training
        try:
            if encoder.stack is None:  # the output_hidden_states fallback
                ensure_capture_registry(model)
            if was_training:
                model.eval()  # no dropout
            return _extract_locked(encoder, texts, batch_size, max_batch_tokens,
                                   cache_dir, shard_size, progress, device)
        finally:
            if encoder.stack is None:
                remove_capture_hooks(model)  # keep the model picklable
            if was_training:
                model.train()


def _extract_locked(encoder, texts, batch_size, max_batch_tokens, cache_dir,
                    shard_size, progress, device):
    bad = 0
    try:
        with torch.inference_mode():
            if cache_dir is not None:
                return _run_cached(encoder, texts, cache_dir, shard_size,
                                   batch_size, max_batch_tokens, progress, device)
            ids, tt = encoder.tokenize(texts)
            bar = _progress_bar(progress, len(texts))
            try:
                lengths, arrays, bad = encoder.encode_chunk(
                    ids, tt, lambda n, d, dt: [np.empty((n, d), dt)
                                               for _ in encoder.layers],
                    batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                    device=device, bar=bar)
            finally:
                if bar is not None:
                    bar.close()
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            return [RaggedArray(a, offsets) for a in arrays]
    finally:
        _warn_non_finite(bad)


def _run_cached(encoder, texts, cache_dir, shard_size, batch_size,
                max_batch_tokens, progress, device):
    spec = encoder.spec()
    spec["texts"] = {"n": len(texts),
                     "sha256": _cache.texts_hash(_cache.text_digests(texts))}
    cache = _cache.ShardedCache(cache_dir, spec, encoder.layers, shard_size,
                                len(texts))
    meta = cache.open()
    if not meta["merged"]:
        done = set(meta["complete_shards"])
        todo = [i for i in range(cache.n_shards) if i not in done]
        n_done = len(texts) - sum(len(texts[cache.shard_slice(i)]) for i in todo)
        bar = _progress_bar(progress, len(texts), n_done) if todo else None
        bad = 0
        try:
            for i in todo:
                part = cache.shard_slice(i)
                ids, tt = encoder.tokenize(texts[part], first_index=part.start)
                lengths, arrays, b = encoder.encode_chunk(
                    ids, tt, lambda n, d, dt, i=i: cache.allocate(i, n, d, dt),
                    batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                    device=device, bar=bar)
                bad += b
                cache.commit(i, lengths, arrays)
                del arrays
        except BaseException:
            cache.abort_all()
            raise
        finally:
            if bar is not None:
                bar.close()
            _warn_non_finite(bad)
        cache.merge()
    return cache.load()


def extract_activations(model, tokenizer, texts, *, layers=-1, max_length=None,
                        drop_first_token=False, dtype="float16", batch_size=32,
                        max_batch_tokens=16384, device=None,
                        add_special_tokens=True, cache_dir=None, shard_size=2048,
                        progress=None):
    """Per-token hidden states of a Hugging Face model, one RaggedArray per layer.

    Padding tokens are never returned: text ``i`` of the result has exactly as
    many rows as it has tokens (after truncation, minus one with
    ``drop_first_token=True``), equal to what running the text alone gives.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Any model that accepts ``output_hidden_states=True`` (encoder, decoder,
        or the encoder of an encoder-decoder). Heads (LM, classification) are
        skipped: only its ``base_model`` runs. It is put in eval mode for the
        run and back in train mode afterwards if it was.
    tokenizer : transformers.PreTrainedTokenizerBase
        The model's tokenizer. Its ``padding_side`` does not matter: batches
        are always right-padded, so that every token keeps the position it has
        when its text runs alone.
    texts : sequence of str
        The texts (a list, a 1-D array, a pandas Series...); every text must
        have at least one token after tokenization (two with
        ``drop_first_token=True``).
    layers : int or sequence of int, default=-1
        Indices into the model's ``hidden_states``: 0 is the embedding output,
        ``k`` the output of block ``k``; negative indices count from the end
        (-1 is the last layer, after the final norm in most decoders).
    max_length : int or None, default=None
        Truncate each text to this many tokens (special tokens included). None
        truncates only at the tokenizer's ``model_max_length`` when it defines
        a finite one.
    drop_first_token : bool or "special", default=False
        ``True``: drop each text's first token, whatever it is (BOS /
        attention-sink tokens, whose norm is often ~100x the others; but with
        a tokenizer that adds no BOS, such as GPT-2's or SmolLM2's GGUF one,
        the first token is the text's first word). ``"special"``: drop it
        only where it is a special token of the tokenizer (BOS, CLS). Applied
        after truncation; :func:`token_strings` with ``return_dropped=True``
        shows what was dropped.
    dtype : {"float16", "float32", "float64"}, default="float16"
        Output dtype; the cast happens on the device. A float16 overflow
        warns.
    batch_size : int, default=32
        Texts per forward pass at most.
    max_batch_tokens : int or None, default=16384
        Padded tokens (texts x longest text) per forward pass at most; short
        texts get large batches, long texts small ones.
    device : str, torch.device or None, default=None
        Run on this device (the model is moved there with ``model.to``); None
        keeps the model where it is.
    add_special_tokens : bool, default=True
        Passed to the tokenizer (BOS, CLS/SEP...).
    cache_dir : str, path-like or None, default=None
        Stream the activations to memory-mapped ``.npy`` shards under this
        folder instead of RAM; a rerun with the same model, options and texts
        resumes where an interrupted run stopped, then loads from disk. The
        result's buffers are memory-mapped read-only.
    shard_size : int, default=2048
        Texts per on-disk shard (the unit of resumption).
    progress : bool or None, default=None
        tqdm progress bar over texts; None shows it only on runs longer than
        5 seconds.

    Returns
    -------
    RaggedArray or list of RaggedArray
        One RaggedArray (``(n_texts, None, d_model)``) when ``layers`` is an
        int, else a list in the order of ``layers``.

    See Also
    --------
    TransformerActivations : The same extraction as a scikit-learn transformer
        with an in-memory cache, for pipelines and grid searches.
    token_strings : The token strings that label each returned row.
    sklearn_attnprobe.ActivationScaler : Standardise the activations before
        a probe.

    Examples
    --------
    A tiny word-level tokenizer and a random two-layer BERT, built offline
    (with a real model, load both with ``from_pretrained``):

    >>> from tokenizers import Tokenizer, models, pre_tokenizers, processors
    >>> from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
    >>> from sklearn_attnprobe.activations import extract_activations
    >>> words = "[PAD] [UNK] [CLS] [SEP] the cat sat on a mat".split()
    >>> core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
    ...                                   unk_token="[UNK]"))
    >>> core.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> core.post_processor = processors.TemplateProcessing(
    ...     single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]",
    ...                                     pad_token="[PAD]")
    >>> model = BertModel(BertConfig(vocab_size=len(words), hidden_size=16,
    ...                              num_hidden_layers=2, num_attention_heads=2,
    ...                              intermediate_size=32))
    >>> texts = ["the cat sat on the mat", "a cat"]
    >>> acts = extract_activations(model, tokenizer, texts)
    >>> acts.lengths, acts.d_model, acts.dtype  # [CLS] and [SEP] included
    (array([8, 4]), 16, dtype('float16'))
    >>> emb, last = extract_activations(model, tokenizer, texts, layers=[0, -1],
    ...                                 drop_first_token=True, dtype="float32")
    >>> last.lengths, last[0].shape
    (array([7, 3]), (7, 16))
    """
    texts = check_texts(texts)
    encoder = Encoder(model, tokenizer, layers=layers, max_length=max_length,
                      drop_first_token=drop_first_token, dtype=dtype,
                      add_special_tokens=add_special_tokens, device=device)
    out = run_extraction(encoder, texts, batch_size=batch_size,
                         max_batch_tokens=max_batch_tokens, cache_dir=cache_dir,
                         shard_size=shard_size, progress=progress)
    return out[0] if encoder.single else out
