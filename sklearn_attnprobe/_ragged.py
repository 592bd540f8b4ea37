"""Ragged activations: one flat token buffer plus per-text start and length.

A :class:`RaggedArray` stores the hidden states of ``n`` texts as a single
``(n_tokens, d_model)`` buffer and two integer arrays, ``starts`` and
``lengths``. Selecting texts (integer arrays, boolean masks, slices) only
selects entries of those two arrays, so cross-validation splits share one
buffer instead of copying every text, and joblib memory-maps that one buffer
for its workers instead of pickling thousands of small arrays.
"""

import numbers
import zipfile

import numpy as np

__all__ = ["RaggedArray"]


def _as_index_array(key, n):
    """Turn a slice / boolean mask / integer sequence into int64 positions."""
    if isinstance(key, slice):
        return np.arange(n, dtype=np.int64)[key]
    key = np.asarray(key)
    if key.dtype == bool:
        if key.shape != (n,):
            raise IndexError(
                f"boolean index has shape {key.shape}, expected ({n},)"
            )
        return np.flatnonzero(key).astype(np.int64)
    if key.size == 0:
        return np.zeros(0, dtype=np.int64)
    if key.ndim != 1 or not np.issubdtype(key.dtype, np.integer):
        raise IndexError(
            "RaggedArray indices must be integers, slices, 1-D integer arrays "
            f"or boolean masks; got an array of dtype {key.dtype} and shape "
            f"{key.shape}"
        )
    key = key.astype(np.int64)
    if key.size and (key.min() < -n or key.max() >= n):
        raise IndexError(f"index out of range for a RaggedArray of {n} texts")
    return np.where(key < 0, key + n, key)


class RaggedArray:
    """Variable-length sequences of vectors in one flat buffer.

    Parameters
    ----------
    data : ndarray of shape (n_tokens, d_model)
        Token vectors of all texts. May be a read-only or memory-mapped array;
        it is never modified.
    offsets : array-like of int of shape (n_texts + 1,), default=None
        Text ``i`` is ``data[offsets[i]:offsets[i + 1]]``. Use either
        ``offsets`` or the pair ``starts`` / ``lengths``.
    starts, lengths : array-like of int of shape (n_texts,), default=None
        Text ``i`` is ``data[starts[i]:starts[i] + lengths[i]]``. Texts may
        overlap or leave tokens unused; this is how indexing avoids copies.

    Attributes
    ----------
    data : ndarray of shape (n_tokens_buffer, d_model)
    starts : ndarray of int64 of shape (n_texts,)
    lengths : ndarray of int64 of shape (n_texts,)
    shape : tuple ``(n_texts, None, d_model)``
        ``None`` marks the ragged axis. ``shape[0]`` is what scikit-learn
        reads as the number of samples.

    See Also
    --------
    ActivationScaler : Standardises ragged activations, ragged in, ragged out.
    AttentionProbeClassifier : Accepts a RaggedArray (or a list of arrays).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_attnprobe import RaggedArray
    >>> texts = [np.ones((3, 4)), np.zeros((1, 4)), np.full((2, 4), 2.0)]
    >>> X = RaggedArray.from_list(texts)
    >>> len(X), X.lengths.tolist(), X.shape
    (3, [3, 1, 2], (3, None, 4))
    >>> X[[2, 0]].lengths.tolist()
    [2, 3]
    >>> X[1].shape
    (1, 4)
    """

    def __init__(self, data, offsets=None, *, starts=None, lengths=None):
        data = np.asarray(data) if not isinstance(data, np.ndarray) else data
        if data.ndim != 2:
            raise ValueError(
                f"RaggedArray data must be 2-D (n_tokens, d_model); got shape "
                f"{data.shape}"
            )
        if offsets is not None:
            if starts is not None or lengths is not None:
                raise TypeError("pass either offsets or starts/lengths, not both")
            offsets = np.asarray(offsets, dtype=np.int64)
            if offsets.ndim != 1 or offsets.size < 1:
                raise ValueError("offsets must be 1-D with n_texts + 1 entries")
            starts, lengths = offsets[:-1], np.diff(offsets)
        elif starts is None or lengths is None:
            raise TypeError("RaggedArray needs offsets, or starts and lengths")
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if starts.shape != lengths.shape:
            raise ValueError("starts and lengths must have the same length")
        if lengths.size and (
            lengths.min() < 0
            or starts.min() < 0
            or (starts + lengths).max() > data.shape[0]
        ):
            raise ValueError(
                "text bounds fall outside the data buffer (negative length or "
                "start, or start + length > n_tokens)"
            )
        self.data = data
        self.starts = starts
        self.lengths = lengths

    # -- construction -----------------------------------------------------
    @classmethod
    def from_list(cls, arrays, dtype=None):
        """Pack a sequence of ``(T_i, d_model)`` arrays into one buffer (one copy).

        Parameters
        ----------
        arrays : sequence of array-like of shape (T_i, d_model)
            The texts, in order. They are concatenated once.
        dtype : numpy dtype or None, default=None
            Dtype of the buffer; None keeps the concatenation's dtype.

        Returns
        -------
        ragged : RaggedArray
            A packed RaggedArray owning the new buffer.
        """
        from ._validation import unwrap_pandas

        arrays = [np.asarray(a) for a in unwrap_pandas(arrays)]
        for i, a in enumerate(arrays):
            if a.ndim != 2:
                raise ValueError(
                    f"text {i} has {a.ndim} dimension(s); each text must be a "
                    "2-D array of shape (n_tokens, d_model)"
                )
            if a.shape[1] != arrays[0].shape[1]:
                raise ValueError(
                    f"text {i} has d_model={a.shape[1]} but text 0 has "
                    f"d_model={arrays[0].shape[1]}; all texts must share d_model"
                )
        if not arrays:
            raise ValueError("cannot build a RaggedArray from an empty list")
        lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        data = np.concatenate(arrays, axis=0)
        if dtype is not None:
            data = data.astype(dtype, copy=False)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        return cls(data, offsets)

    @classmethod
    def from_padded(cls, X, lengths=None, *, mask=None):
        """Pack a padded ``(n, T, d)`` array, keeping only each text's real tokens.

        Give either the number of real tokens of each row (``lengths``, the
        tokens are taken from the start of the row: right padding) or the
        batch's ``(n, T)`` attention mask (``mask``, or as the second
        positional argument). A mask row must be ones then zeros (right
        padding) or zeros then ones (left padding, as decoder-only batches
        are often padded); the masked tokens are kept in order. A row with
        ones on both sides of a zero, or a run of ones in the middle, raises:
        it is not padding.

        Parameters
        ----------
        X : array-like of shape (n_texts, T, d_model)
            Padded activations, e.g. a batch's hidden states.
        lengths : array-like of int of shape (n_texts,), or of shape (n_texts, T)
            Number of real tokens of each row, at most ``T``, for right
            padding (for a transformers batch,
            ``attention_mask.sum(axis=1)``). A 2-D array here is taken as
            ``mask``.
        mask : array-like of bool or {0, 1} of shape (n_texts, T), default=None
            Attention mask: 1 for real tokens, 0 for padding.

        Returns
        -------
        ragged : RaggedArray
            A packed RaggedArray holding only the real tokens.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_attnprobe import RaggedArray
        >>> X = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
        >>> mask = np.array([[1, 1, 0], [0, 1, 1]])   # right- and left-padded
        >>> RaggedArray.from_padded(X, mask).to_list()[1]
        array([[ 8.,  9.],
               [10., 11.]], dtype=float32)
        """
        X = np.asarray(X)
        if X.ndim != 3:
            raise ValueError(f"from_padded expects a 3-D array; got shape {X.shape}")
        if lengths is not None and mask is not None:
            raise ValueError("give lengths or mask, not both")
        if lengths is None and mask is None:
            raise ValueError("from_padded needs lengths (n_texts,) or mask (n_texts, T)")
        if mask is None and np.ndim(lengths) == 2 and (
                np.shape(lengths)[1] != 1 or X.shape[1] == 1):
            lengths, mask = None, lengths  # an (n, T) attention mask
        if mask is not None:
            return cls._from_mask(X, mask)
        lengths = np.asarray(lengths)
        if lengths.ndim > 2 or (lengths.size and lengths.dtype.kind not in "iub"):
            raise ValueError(
                f"lengths must be integers of shape ({X.shape[0]},), or pass an "
                f"(n_texts, T) attention mask; got shape {lengths.shape}, dtype "
                f"{lengths.dtype}"
            )
        lengths = lengths.astype(np.int64).reshape(-1)
        if lengths.shape[0] != X.shape[0]:
            raise ValueError(
                f"lengths has {lengths.shape[0]} entries but X has {X.shape[0]} rows"
            )
        if lengths.size and (lengths.min() < 0 or lengths.max() > X.shape[1]):
            raise ValueError(f"lengths must lie in [0, {X.shape[1]}]")
        keep = np.arange(X.shape[1])[None, :] < lengths[:, None]
        data = X[keep]  # row-major boolean selection keeps text order
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        return cls(data, offsets)

    @classmethod
    def _from_mask(cls, X, mask):
        if hasattr(mask, "detach"):  # torch tensor
            mask = mask.detach().cpu().numpy()
        mask = np.asarray(mask)
        n, T = X.shape[:2]
        if mask.shape != (n, T):
            raise ValueError(
                f"mask has shape {mask.shape} but X has shape {X.shape}; the "
                f"attention mask must be ({n}, {T})"
            )
        if mask.dtype != bool:
            if mask.dtype.kind not in "iuf" or not np.isin(mask, (0, 1)).all():
                raise ValueError("mask must be boolean or hold only 0 and 1")
            mask = mask.astype(bool)
        lengths = mask.sum(axis=1).astype(np.int64)
        first = np.where(lengths > 0, np.argmax(mask, axis=1), 0)
        pos = np.arange(T)[None, :]
        run = (pos >= first[:, None]) & (pos < (first + lengths)[:, None])
        padded_once = (first == 0) | (first + lengths == T)
        bad = np.flatnonzero(~(run == mask).all(axis=1) | ~padded_once)
        if bad.size:
            raise ValueError(
                f"mask row {int(bad[0])} ({bad.size} row(s) in all) is not padding: "
                "each row must be ones then zeros (right padding) or zeros then "
                "ones (left padding)"
            )
        data = X[mask]  # row-major: texts in order, tokens in order
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        return cls(data, offsets)

    # -- properties -----------------------------------------------------------
    @property
    def d_model(self):
        return self.data.shape[1]

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def shape(self):
        return (len(self.lengths), None, self.d_model)

    @property
    def ndim(self):
        return 3

    @property
    def n_tokens(self):
        """Number of tokens referenced by the texts (not the buffer size)."""
        return int(self.lengths.sum())

    @property
    def offsets(self):
        """``(n_texts + 1,)`` offsets; only defined when the texts are packed."""
        if not self.is_packed:
            raise ValueError(
                "this RaggedArray is a selection of another one; call .pack() "
                "for contiguous offsets"
            )
        return np.concatenate([[0], np.cumsum(self.lengths)])

    @property
    def is_packed(self):
        """True when the texts tile ``data`` in order, without gaps."""
        expected = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        return (
            np.array_equal(self.starts, expected[: len(self.starts)])
            and self.n_tokens == self.data.shape[0]
        )

    # -- sequence protocol ----------------------------------------------------
    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            # scikit-learn indexes arrays as X[indices, ...]
            rest = key[1:]
            if not all(k is Ellipsis or (isinstance(k, slice) and k == slice(None))
                       for k in rest):
                raise IndexError("RaggedArray supports indexing along texts only")
            key = key[0]
        if isinstance(key, (bool, np.bool_)):
            raise IndexError("a single boolean is not a valid RaggedArray index")
        if isinstance(key, numbers.Integral):
            n = len(self)
            if not -n <= key < n:
                raise IndexError(f"index {key} out of range for {n} texts")
            key = int(key) % n
            s = self.starts[key]
            return self.data[s : s + self.lengths[key]]
        idx = _as_index_array(key, len(self))
        return RaggedArray(self.data, starts=self.starts[idx], lengths=self.lengths[idx])

    def __iter__(self):
        for s, n in zip(self.starts.tolist(), self.lengths.tolist()):
            yield self.data[s : s + n]

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "a RaggedArray has texts of different lengths and cannot become one "
            "numpy array; use .to_list(), .to_padded() or .data"
        )

    def __repr__(self):
        n = len(self)
        if n:
            lens = f"lengths {self.lengths.min()}..{self.lengths.max()}"
        else:
            lens = "empty"
        return (
            f"RaggedArray(n_texts={n}, d_model={self.d_model}, {lens}, "
            f"n_tokens={self.n_tokens}, dtype={self.dtype})"
        )

    # -- conversion -------------------------------------------------------------
    def to_list(self):
        """List of ``(T_i, d_model)`` views into the buffer.

        Returns
        -------
        texts : list of ndarray of shape (T_i, d_model)
            Views, not copies: writing to them writes to :attr:`data`.
        """
        return list(self)

    def token_index(self):
        """Buffer row of every referenced token, text after text.

        Returns
        -------
        rows : ndarray of int64 of shape (n_tokens,)
            ``data[rows]`` holds the tokens of text 0, then text 1, and so on.
        """
        total = self.n_tokens
        text_of_token = np.repeat(np.arange(len(self)), self.lengths)
        first = np.cumsum(self.lengths) - self.lengths
        within = np.arange(total, dtype=np.int64) - np.repeat(first, self.lengths)
        return self.starts[text_of_token] + within

    def pack(self, dtype=None):
        """Contiguous copy holding only the referenced tokens, in text order.

        Parameters
        ----------
        dtype : numpy dtype or None, default=None
            Dtype of the copy; None keeps the buffer's dtype.

        Returns
        -------
        ragged : RaggedArray
            A packed RaggedArray (``is_packed`` is True) with a new buffer.
        """
        data = np.take(self.data, self.token_index(), axis=0)
        if dtype is not None:
            data = data.astype(dtype, copy=False)
        return RaggedArray(data, np.concatenate([[0], np.cumsum(self.lengths)]))

    def to_padded(self, fill_value=0.0, max_length=None):
        """``(n_texts, T, d_model)`` array (right padding) and a boolean mask.

        Parameters
        ----------
        fill_value : float, default=0.0
            Value of the padded positions.
        max_length : int or None, default=None
            ``T``; None uses the longest text. Longer texts are truncated.

        Returns
        -------
        padded : ndarray of shape (n_texts, T, d_model)
            The texts, each starting at position 0.
        mask : ndarray of bool of shape (n_texts, T)
            True at real tokens, False at padding.
        """
        T = int(self.lengths.max()) if max_length is None else int(max_length)
        pos = np.arange(T)
        mask = pos[None, :] < self.lengths[:, None]
        rows = self.starts[:, None] + np.minimum(pos[None, :], self.lengths[:, None] - 1)
        out = np.take(self.data, np.clip(rows, 0, None).reshape(-1), axis=0)
        out = out.reshape(len(self), T, self.d_model)
        out[~mask] = fill_value
        return out, mask

    # -- persistence ------------------------------------------------------------
    def save(self, path):
        """Write an uncompressed ``.npz`` that :meth:`load` can memory-map.

        Parameters
        ----------
        path : str or path-like
            Destination file; numpy appends ``.npz`` when it is missing. A
            selection of another RaggedArray is packed first.
        """
        packed = self if self.is_packed else self.pack()
        np.savez(path, data=packed.data, offsets=packed.offsets)

    @classmethod
    def load(cls, path, mmap_mode=None):
        """Read a file written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
            A ``.npz`` file written by :meth:`save`.
        mmap_mode : {None, "r", "r+", "c"}, default=None
            With ``mmap_mode="r"`` the token buffer is memory-mapped straight
            from the (uncompressed) archive: nothing but the offsets is read
            into RAM. None reads everything.

        Returns
        -------
        ragged : RaggedArray
            The stored texts.
        """
        if mmap_mode is None:
            with np.load(path) as f:
                return cls(f["data"], f["offsets"])
        with np.load(path) as f:
            offsets = f["offsets"]
        return cls(_memmap_npz_member(path, "data.npy", mmap_mode), offsets)


def _memmap_npz_member(path, member, mmap_mode):
    """Memory-map an uncompressed array stored inside a ``.npz`` archive."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"{member} in {path} is compressed; cannot memory-map")
    with open(path, "rb") as fh:
        # local file header: 30 fixed bytes, then name and extra field
        fh.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(fh.read(4), dtype="<u2")
        fh.seek(info.header_offset + 30 + int(name_len) + int(extra_len))
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        offset = fh.tell()
    return np.memmap(
        path, dtype=dtype, mode=mmap_mode, offset=offset, shape=shape,
        order="F" if fortran else "C",
    )
