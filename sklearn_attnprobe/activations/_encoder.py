"""Texts to token ids to hidden states: validation, batching, one forward pass.

:class:`Encoder` holds the validated extraction options and runs the model on
one batch at a time; :mod:`._extract` drives it over a corpus, into RAM or
into the on-disk cache. Batches are padded **on the right**, whatever the
tokenizer's ``padding_side``: with right padding every real token keeps the
positions ``0..T_i-1`` it has when its text runs alone in every architecture
(absolute position embeddings as in BERT/GPT-2, rotary ones, recurrent
models), and causal models never attend to the padding. Left padding is a
generation convenience; for a full forward pass it would shift absolute
positions.
"""

import inspect
import numbers

import numpy as np
import torch

from . import _cache, _hf_compat

_DTYPES = {"float16": torch.float16, "float32": torch.float32,
           "float64": torch.float64}


def check_texts(X):
    """Return ``X`` as a list of ``str``, or raise a clear error."""
    if isinstance(X, (str, bytes)):
        raise TypeError("expected a sequence of texts (one str per text), got a "
                        "single string; wrap it in a list")
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):
        X = X.to_numpy()  # pandas Series / one-column DataFrame
    if isinstance(X, np.ndarray):
        if X.ndim == 2 and X.shape[1] == 1:
            X = X[:, 0]
        if X.ndim != 1:
            raise ValueError(f"expected a 1-D sequence of texts; got an array of "
                             f"shape {X.shape}")
    try:
        texts = list(X)
    except TypeError:
        raise TypeError(f"expected a sequence of texts, got {type(X).__name__}") from None
    if not texts:
        raise ValueError("no texts: at least one text is required")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is a {type(t).__name__}, not a str; "
                            "pass raw texts (strings)")
    return [str(t) for t in texts]


def positive_int(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < 1:
        raise ValueError(f"{name} must be a positive integer"
                         f"{' or None' if allow_none else ''}; got {value!r}")
    return int(value)


def resolve_max_length(tokenizer, max_length):
    """Truncation length: ``max_length``, else the tokenizer's finite
    ``model_max_length``, else None (no truncation)."""
    if max_length is None:
        mml = getattr(tokenizer, "model_max_length", None)
        return mml if isinstance(mml, int) and 0 < mml < 1_000_000 else None
    return positive_int(max_length, "max_length")


DROP_MODES = (False, True, "special")


def check_drop_first_token(value):
    """``drop_first_token`` as False, True or ``"special"``."""
    if isinstance(value, str):
        if value != "special":
            raise ValueError(f"drop_first_token must be True, False or 'special'; "
                             f"got {value!r}")
        return value
    if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"drop_first_token must be True, False or 'special'; got {value!r}")


def first_token_drops(tokenizer, ids, mode):
    """Per text, 1 where its first token is dropped: always (``True``), never
    (``False``), or where it is one of the tokenizer's special tokens
    (``"special"``: a BOS or CLS token goes, a real word stays)."""
    if mode is True:
        return np.ones(len(ids), dtype=np.int64)
    if not mode:
        return np.zeros(len(ids), dtype=np.int64)
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    return np.array([1 if seq and seq[0] in special else 0 for seq in ids], dtype=np.int64)


def tokenize_texts(tokenizer, texts, *, max_length, add_special_tokens, drop,
                   first_index=0):
    """Unpadded token ids, token type ids (or None) and first-token drops.

    The one tokenization of the package: extraction and
    :func:`~sklearn_attnprobe.activations.token_strings` both go through it,
    so token strings line up with activation rows. ``max_length`` is already
    resolved (:func:`resolve_max_length`); ``drop`` is the
    ``drop_first_token`` mode (see :func:`first_token_drops`): a text whose
    first token is dropped needs at least 2 tokens. Returns ``(ids,
    token_type_ids, drops)``, ``drops`` 0/1 per text.
    """
    enc = tokenizer(
        list(texts), add_special_tokens=add_special_tokens,
        truncation=max_length is not None, max_length=max_length,
        padding=False, return_attention_mask=False)
    ids = [list(x) for x in enc["input_ids"]]
    drops = first_token_drops(tokenizer, ids, drop)
    for i, seq in enumerate(ids):
        if len(seq) - drops[i] < 1:
            raise ValueError(
                f"text {first_index + i} ({texts[i][:40]!r}) has {len(seq)} "
                f"token(s) after tokenization; "
                + (f"drop_first_token={drop!r} needs at least 2" if drops[i]
                   else "every text needs at least 1"))
    return ids, enc.get("token_type_ids"), drops


def _n_hidden_states(model):
    """Number of hidden states the model returns (layers + embeddings), or None."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    names = ("num_hidden_layers", "n_layer", "num_layers")
    if getattr(cfg, "is_encoder_decoder", False):
        names = ("encoder_layers", "num_layers", "num_hidden_layers")
    for name in names:
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v + 1
    return None


def resolve_layers(model, layers):
    """``(tuple of layer indices, single)``; negative indices count from the end."""
    single = isinstance(layers, numbers.Integral) and not isinstance(layers, bool)
    if single:
        seq = [layers]
    elif isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        seq = None
    else:
        seq = list(layers)
    if not seq or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool)
                          for k in seq):
        raise ValueError(f"layers must be an int or a non-empty sequence of ints; "
                         f"got {layers!r}")
    n = _n_hidden_states(model)
    if n is not None:
        for k in seq:
            if not -n <= k < n:
                raise ValueError(
                    f"layer {k} is out of range: the model returns {n} hidden "
                    f"states (0 = embeddings, 1..{n - 1} = after each block; "
                    "negative indices count from the end)")
        seq = [int(k) % n for k in seq]
    return tuple(int(k) for k in seq), single


def length_batches(lengths, batch_size, max_batch_tokens):
    """Index batches, longest texts first, each of similar lengths.

    A batch holds at most ``batch_size`` texts and, when
    ``max_batch_tokens`` is set, at most that many padded tokens
    (``n_texts * longest``); a text longer than the budget runs alone.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, cur, longest = [], [], 0
    for i in order.tolist():
        n = int(lengths[i])
        if cur and (len(cur) >= batch_size or (
                max_batch_tokens is not None
                and max(longest, n) * (len(cur) + 1) > max_batch_tokens)):
            batches.append(np.array(cur))
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        batches.append(np.array(cur))
    return batches


def _hidden_states(out):
    hs = getattr(out, "hidden_states", None)
    return hs if hs is not None else getattr(out, "encoder_hidden_states", None)


class _States:
    """Hidden states by index, with ``IndexError`` past the end like a tuple."""

    def __init__(self, states, n):
        self.states, self.n = states, n

    def __getitem__(self, k):
        if not 0 <= k < self.n:
            raise IndexError(k)
        return self.states[k]

    def __len__(self):
        return self.n


class Encoder:
    """Validated options plus the model-facing part of an extraction."""

    def __init__(self, model, tokenizer, *, layers=-1, max_length=None,
                 drop_first_token=False, dtype="float16", add_special_tokens=True,
                 device=None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (a transformers "
                            f"model); got {type(model).__name__}")
        if not callable(tokenizer):
            raise TypeError("tokenizer must be a Hugging Face tokenizer (callable "
                            f"on a list of texts); got {type(tokenizer).__name__}")
        try:
            key = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        except TypeError:
            key = str(dtype)
        if key not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}; got {dtype!r}")
        self.model, self.tokenizer = model, tokenizer
        self.dtype_name, self.torch_dtype = key, _DTYPES[key]
        self.layers, self.single = resolve_layers(model, layers)
        self.drop = check_drop_first_token(drop_first_token)
        self.add_special_tokens = bool(add_special_tokens)
        self.max_length = resolve_max_length(tokenizer, max_length)
        self.device = device
        cfg = getattr(model, "config", None)
        self.net = model
        if getattr(cfg, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            self.net = model.get_encoder()
        else:
            base = getattr(model, "base_model", None)
            if isinstance(base, torch.nn.Module):
                self.net = base  # skip LM / classification heads
        # hidden states through forward pre-hooks on the block stack (public
        # torch API, see _hf_compat); output_hidden_states only as a fallback
        n_states = _n_hidden_states(model)
        self.n_layers = None if n_states is None else n_states - 1
        self.stack = _hf_compat.find_layer_stack(self.net, self.n_layers)
        self.request = (None if self.stack is not None
                        else _hf_compat.hidden_states_request(self.layers))
        try:
            params = inspect.signature(self.net.forward).parameters
        except (TypeError, ValueError):
            params = {}
        self.use_token_types = "token_type_ids" in params
        pad = getattr(tokenizer, "pad_token_id", None)
        if not isinstance(pad, int):
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = pad if isinstance(pad, int) else 0

    # -- description -------------------------------------------------------------
    def spec(self):
        """JSON-able description of everything that determines the output."""
        return {
            "model": _cache.model_fingerprint(self.model),
            "tokenizer": _cache.tokenizer_fingerprint(self.tokenizer),
            "layers": list(self.layers),
            "max_length": self.max_length,
            "truncation_side": getattr(self.tokenizer, "truncation_side", None),
            "drop_first_token": self.drop,
            "dtype": self.dtype_name,
            "add_special_tokens": self.add_special_tokens,
        }

    # -- tokenization ------------------------------------------------------------------
    def tokenize(self, texts, first_index=0):
        """Unpadded token ids (and token type ids, or None) of each text."""
        ids, tt, _ = tokenize_texts(self.tokenizer, texts, max_length=self.max_length,
                                    add_special_tokens=self.add_special_tokens,
                                    drop=self.drop, first_index=first_index)
        return ids, (tt if self.use_token_types else None)

    def drops(self, ids):
        """0/1 per text: whether its first token is dropped."""
        return first_token_drops(self.tokenizer, ids, self.drop)

    # -- the model -------------------------------------------------------------------------
    def prepare(self):
        """Move the model if asked; return the device inputs go to."""
        if self.device is not None:
            self.model.to(self.device)
            return torch.device(self.device)
        p = next(self.net.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def forward(self, ids_list, tt_list, device):
        """Hidden states of one batch: per layer an ``(n_kept, d)`` tensor."""
        lens = [len(x) for x in ids_list]
        B, L = len(ids_list), max(lens)
        ids = np.full((B, L), self.pad_id, dtype=np.int64)
        mask = np.zeros((B, L), dtype=np.int64)
        tt = np.zeros((B, L), dtype=np.int64) if tt_list is not None else None
        for r, seq in enumerate(ids_list):  # right padding, see module docstring
            ids[r, : lens[r]] = seq
            mask[r, : lens[r]] = 1
            if tt is not None:
                tt[r, : lens[r]] = tt_list[r]
        attn = torch.from_numpy(mask).to(device)
        kwargs = {"input_ids": torch.from_numpy(ids).to(device),
                  "attention_mask": attn}
        if tt is not None:
            kwargs["token_type_ids"] = torch.from_numpy(tt).to(device)
        hs = self._run_net(kwargs)
        keep = attn.bool()
        drops = self.drops(ids_list)
        if drops.any():
            keep[torch.from_numpy(drops.astype(bool)).to(device), 0] = False
        result = []
        for k in self.layers:
            try:
                h = hs[k]
            except IndexError:
                raise ValueError(f"layer {k} is out of range: the model returned "
                                 f"{len(hs)} hidden states") from None
            result.append(h[keep].to(self.torch_dtype))
        return result

    def _run_net(self, kwargs):
        """Indexable hidden states ``0..n_layers`` of one batch (only the
        requested ones need to be there)."""
        if self.stack is None:
            kwargs["output_hidden_states"] = self.request
            hs = _hidden_states(self.net(**kwargs))
            if hs is None:
                raise TypeError(f"{type(self.net).__name__} returned no hidden_states "
                                "for output_hidden_states=True")
            return hs
        n = self.n_layers
        inner = [k for k in self.layers if k < n]
        with _hf_compat.BlockInputs(self.stack, inner) as rec:
            out = self.net(**kwargs)
        states = dict(rec.states)
        if n in self.layers:
            last = getattr(out, "last_hidden_state", None)
            states[n] = last if last is not None else out[0]
        missing = [k for k in self.layers if states.get(k) is None]
        if missing:
            raise TypeError(f"{type(self.net).__name__} ran without reaching "
                            f"block(s) {missing} of its {n}")
        return _States(states, n + 1)

    def encode_chunk(self, ids, tt, alloc, *, batch_size, max_batch_tokens,
                     device, bar=None):
        """Encode texts ``ids`` into buffers from ``alloc(n_tokens, d, dtype)``.

        Returns ``(kept lengths, list of per-layer buffers, n_non_finite)``;
        buffer rows follow the order of ``ids``.
        """
        n_in = np.array([len(x) for x in ids], dtype=np.int64)
        n_out = n_in - self.drops(ids)
        starts = np.concatenate([[0], np.cumsum(n_out)[:-1]])
        arrays, bad = None, 0
        for batch in length_batches(n_in, batch_size, max_batch_tokens):
            hs = self.forward([ids[i] for i in batch],
                              None if tt is None else [tt[i] for i in batch], device)
            if self.torch_dtype == torch.float16:
                bad += sum(int((~torch.isfinite(h)).sum()) for h in hs)
            hs = [h.cpu().numpy() for h in hs]
            if arrays is None:
                arrays = alloc(int(n_out.sum()), hs[0].shape[1], hs[0].dtype)
            b_out = n_out[batch]
            first = np.cumsum(b_out) - b_out
            rows = (np.repeat(starts[batch] - first, b_out)
                    + np.arange(int(b_out.sum()), dtype=np.int64))
            for a, h in zip(arrays, hs):
                a[rows] = h
            if bar is not None:
                bar.update(len(batch))
        return n_out, arrays, bad
