"""Tests of the RaggedArray container: construction, indexing, conversion, I/O."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sklearn_attnprobe import RaggedArray

FLOAT_DTYPES = [np.float16, np.float32, np.float64]


def _texts(lengths=(3, 1, 4, 2), d=3, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, d)).astype(dtype) for n in lengths]


def _assert_same_texts(got, expected):
    got, expected = list(got), list(expected)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        assert g.dtype == e.dtype
        np.testing.assert_array_equal(g, e)


@pytest.fixture
def texts():
    return _texts()


@pytest.fixture
def X(texts):
    return RaggedArray.from_list(texts)


# -- construction and basic properties -----------------------------------------
def test_from_list_layout(texts, X):
    assert len(X) == 4
    assert X.shape == (4, None, 3)
    assert X.ndim == 3
    assert X.d_model == 3
    assert X.lengths.dtype == np.int64 and X.starts.dtype == np.int64
    np.testing.assert_array_equal(X.lengths, [3, 1, 4, 2])
    np.testing.assert_array_equal(X.starts, [0, 3, 4, 8])
    np.testing.assert_array_equal(X.offsets, [0, 3, 4, 8, 10])
    assert X.n_tokens == 10
    assert X.data.shape == (10, 3)
    assert X.is_packed
    np.testing.assert_array_equal(X.data, np.concatenate(texts))


def test_iteration_and_to_list_are_views(texts, X):
    _assert_same_texts(X, texts)
    listed = X.to_list()
    assert isinstance(listed, list)
    _assert_same_texts(listed, texts)
    for a in listed:
        assert np.shares_memory(a, X.data)


def test_from_list_round_trip(texts, X):
    _assert_same_texts(RaggedArray.from_list(X.to_list()), texts)


def test_from_list_accepts_nested_python_lists():
    X = RaggedArray.from_list([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0]]])
    np.testing.assert_array_equal(X.lengths, [2, 1])
    np.testing.assert_array_equal(X[1], [[5.0, 6.0]])


def test_from_list_dtype_argument(texts):
    X = RaggedArray.from_list(texts, dtype=np.float32)
    assert X.dtype == np.float32
    np.testing.assert_allclose(X[0], texts[0].astype(np.float32))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dtype_preserved_everywhere(dtype, tmp_path):
    texts = _texts(dtype=dtype)
    X = RaggedArray.from_list(texts)
    assert X.dtype == dtype
    assert X[0].dtype == dtype
    assert X[[2, 0]].dtype == dtype
    assert X[1:].dtype == dtype
    assert X[::-1].pack().dtype == dtype
    assert all(a.dtype == dtype for a in X.to_list())
    padded, _ = X.to_padded()
    assert padded.dtype == dtype
    assert RaggedArray.from_padded(padded, X.lengths).dtype == dtype
    path = tmp_path / "x.npz"
    X[[3, 1]].save(path)
    assert RaggedArray.load(path).dtype == dtype
    assert RaggedArray.load(path, mmap_mode="r").dtype == dtype


def test_starts_lengths_constructor_allows_overlap_and_gaps():
    data = np.arange(12.0).reshape(6, 2)
    X = RaggedArray(data, starts=[4, 0, 1], lengths=[2, 3, 0])
    np.testing.assert_array_equal(X[0], data[4:6])
    np.testing.assert_array_equal(X[1], data[0:3])
    assert X[2].shape == (0, 2)
    assert not X.is_packed
    assert X.n_tokens == 5
    assert X.data is data  # never copied


def test_constructor_keeps_the_callers_buffer():
    data = np.zeros((5, 2), dtype=np.float32)
    data.flags.writeable = False
    X = RaggedArray(data, [0, 2, 5])
    assert X.data is data


def test_to_padded_and_from_padded_round_trip(texts, X):
    padded, mask = X.to_padded(fill_value=-7.0)
    assert padded.shape == (4, 4, 3)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask.sum(axis=1), X.lengths)
    for i, t in enumerate(texts):
        np.testing.assert_array_equal(padded[i, : len(t)], t)
        assert np.all(padded[i, len(t) :] == -7.0)
    back = RaggedArray.from_padded(padded, X.lengths)
    assert back.is_packed
    _assert_same_texts(back, texts)


def test_to_padded_max_length(texts, X):
    padded, mask = X.to_padded(max_length=6)
    assert padded.shape == (4, 6, 3)
    np.testing.assert_array_equal(mask.sum(axis=1), X.lengths)
    assert np.all(padded[~mask] == 0)


def test_to_padded_of_selection_does_not_touch_buffer(texts, X):
    before = X.data.copy()
    padded, mask = X[[3, 0]].to_padded()
    np.testing.assert_array_equal(padded[0, :2], texts[3])
    np.testing.assert_array_equal(padded[1, :3], texts[0])
    np.testing.assert_array_equal(X.data, before)


def test_from_padded_keeps_row_starts():
    P = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    X = RaggedArray.from_padded(P, [2, 3])
    np.testing.assert_array_equal(X[0], P[0, :2])
    np.testing.assert_array_equal(X[1], P[1])


def test_pack_copies_selection_in_order(texts, X):
    sel = X[[2, 0, 2]]
    assert not sel.is_packed
    with pytest.raises(ValueError, match="pack"):
        sel.offsets
    packed = sel.pack()
    assert packed.is_packed
    assert not np.shares_memory(packed.data, X.data)
    np.testing.assert_array_equal(packed.offsets, [0, 4, 7, 11])
    _assert_same_texts(packed, [texts[2], texts[0], texts[2]])
    assert sel.pack(dtype=np.float32).dtype == np.float32


def test_is_packed_of_selections(X):
    assert X[:].is_packed
    assert X[[0, 1, 2, 3]].is_packed
    assert not X[:2].is_packed  # leaves tokens of the buffer unused
    assert not X[1:].is_packed
    assert not X[::-1].is_packed


# -- indexing -------------------------------------------------------------------
def test_int_index_returns_view(texts, X):
    a = X[2]
    assert isinstance(a, np.ndarray)
    assert a.shape == (4, 3)
    np.testing.assert_array_equal(a, texts[2])
    assert np.shares_memory(a, X.data)
    np.testing.assert_array_equal(X[np.int32(1)], texts[1])
    np.testing.assert_array_equal(X[np.int64(3)], texts[3])


@pytest.mark.parametrize("i", [-1, -2, -4])
def test_negative_int_index(texts, X, i):
    np.testing.assert_array_equal(X[i], texts[i])


@pytest.mark.parametrize(
    "key, expected",
    [
        (slice(1, 3), [1, 2]),
        (slice(None, None, -1), [3, 2, 1, 0]),
        (slice(None, None, 2), [0, 2]),
        (slice(-2, None), [2, 3]),
        (slice(5, 9), []),
        ([3, 0], [3, 0]),
        (np.array([1, 1, 2]), [1, 1, 2]),
        (np.array([-1, -4]), [3, 0]),
        ([-2, 0, -2], [2, 0, 2]),
        (np.array([2, 0], dtype=np.uint8), [2, 0]),
        (np.array([2, 0], dtype=np.int32), [2, 0]),
        (np.array([True, False, False, True]), [0, 3]),
        ([False, True, True, False], [1, 2]),
        (np.zeros(4, dtype=bool), []),
        ([], []),
        (np.array([], dtype=np.int64), []),
    ],
)
def test_array_like_index_returns_shared_ragged(texts, X, key, expected):
    sel = X[key]
    assert isinstance(sel, RaggedArray)
    assert sel.data is X.data  # no copy, same buffer
    assert len(sel) == len(expected)
    assert sel.shape == (len(expected), None, 3)
    _assert_same_texts(sel, [texts[i] for i in expected])
    for a in sel:
        assert np.shares_memory(a, X.data)


@pytest.mark.parametrize(
    "key",
    [
        (np.array([2, 0]), Ellipsis),
        (np.array([2, 0]), slice(None)),
        ([2, 0], Ellipsis, Ellipsis),
        (slice(2, None, -2), Ellipsis),
        (np.array([False, False, True, True])[::-1], Ellipsis),
    ],
)
def test_tuple_index_as_scikit_learn_uses(texts, X, key):
    sel = X[key]
    assert isinstance(sel, RaggedArray)
    assert sel.data is X.data
    expected = X[key[0]]
    np.testing.assert_array_equal(sel.starts, expected.starts)
    np.testing.assert_array_equal(sel.lengths, expected.lengths)
    positions = np.arange(len(texts))[key[0]]
    _assert_same_texts(sel, [texts[i] for i in positions])


def test_tuple_with_int_first_returns_text(texts, X):
    np.testing.assert_array_equal(X[1, ...], texts[1])
    np.testing.assert_array_equal(X[(3,)], texts[3])


def test_sklearn_safe_indexing_and_split(texts, X):
    from sklearn.model_selection import train_test_split
    from sklearn.utils import _safe_indexing

    sel = _safe_indexing(X, np.array([3, 1]))
    assert isinstance(sel, RaggedArray) and sel.data is X.data
    _assert_same_texts(sel, [texts[3], texts[1]])
    a, b = train_test_split(X, test_size=2, random_state=0)
    assert isinstance(a, RaggedArray) and isinstance(b, RaggedArray)
    assert a.data is X.data and b.data is X.data
    assert len(a) == 2 and len(b) == 2


def test_selection_of_selection_keeps_original_buffer(texts, X):
    sel = X[[3, 2, 1]][1:]
    assert sel.data is X.data
    _assert_same_texts(sel, [texts[2], texts[1]])


@pytest.mark.parametrize("key", [4, -5, 100, [4], [0, -5], np.array([1, 7])])
def test_out_of_range_index_raises(X, key):
    with pytest.raises(IndexError, match="out of range"):
        X[key]


@pytest.mark.parametrize(
    "key",
    [
        1.5,
        "a",
        None,
        {},
        [1.0, 2.0],
        np.array([0.0, 1.0]),
        np.array([[0, 1]]),
        np.array([0, 1], dtype=object),
        np.array(["a", "b"]),
    ],
    ids=["float", "str", "None", "dict", "float-list", "float-array", "2d-int",
         "object", "str-array"],
)
def test_wrong_index_type_raises_index_error(X, key):
    with pytest.raises(IndexError, match="indices must be integers"):
        X[key]


@pytest.mark.parametrize("mask", [np.array([True, False]), np.ones(5, dtype=bool),
                                  np.ones((4, 1), dtype=bool)])
def test_bool_mask_of_wrong_shape_raises(X, mask):
    with pytest.raises(IndexError, match="boolean index"):
        X[mask]


@pytest.mark.parametrize("key", [(0, 1), ([0, 1], 0), (slice(None), slice(0, 2)),
                                 (Ellipsis, 0), ([0, 1], np.array([0]))])
def test_indexing_beyond_text_axis_raises(X, key):
    with pytest.raises(IndexError, match="along texts only"):
        X[key]


def test_indexing_beyond_text_axis_with_array_raises_index_error(X):
    with pytest.raises(IndexError, match="along texts only"):
        X[[0, 1], np.array([0, 1])]


@pytest.mark.parametrize("convert", [np.asarray, np.array,
                                     lambda X: np.asarray(X, dtype=float)])
def test_array_conversion_raises_type_error(X, convert):
    with pytest.raises(TypeError, match="cannot become one numpy array"):
        convert(X)


def test_repr(X):
    r = repr(X)
    assert "n_texts=4" in r and "d_model=3" in r and "n_tokens=10" in r
    assert "empty" in repr(X[[]])


# -- persistence -----------------------------------------------------------------
@pytest.mark.parametrize("mmap_mode", [None, "r"])
def test_save_load_round_trip(texts, X, tmp_path, mmap_mode):
    path = tmp_path / "acts.npz"
    X.save(path)
    Y = RaggedArray.load(path, mmap_mode=mmap_mode)
    assert Y.is_packed
    np.testing.assert_array_equal(Y.offsets, X.offsets)
    _assert_same_texts(Y, texts)
    if mmap_mode == "r":
        assert isinstance(Y.data, np.memmap)
        assert not Y.data.flags.writeable
        # selections of a memory-mapped array stay views of the map
        assert np.shares_memory(Y[[2, 0]][0], Y.data)
    else:
        assert not isinstance(Y.data, np.memmap)


@pytest.mark.parametrize("mmap_mode", [None, "r"])
def test_save_of_selection_packs_it(texts, X, tmp_path, mmap_mode):
    sel = X[[3, 0, 3]]
    assert not sel.is_packed
    path = tmp_path / "sel.npz"
    sel.save(path)
    Y = RaggedArray.load(path, mmap_mode=mmap_mode)
    assert Y.is_packed
    assert Y.data.shape == (sel.n_tokens, 3)  # only the referenced tokens
    np.testing.assert_array_equal(Y.lengths, [2, 3, 2])
    _assert_same_texts(Y, [texts[3], texts[0], texts[3]])
    if mmap_mode == "r":
        assert isinstance(Y.data, np.memmap)


def test_save_load_str_path_and_fortran_buffer(tmp_path):
    data = np.asfortranarray(np.arange(20, dtype=np.float32).reshape(10, 2))
    X = RaggedArray(data, [0, 4, 10])
    path = str(tmp_path / "f.npz")
    X.save(path)
    Y = RaggedArray.load(path, mmap_mode="r")
    np.testing.assert_array_equal(Y.data, data)
    _assert_same_texts(Y, X)


# -- constructor errors -----------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(offsets=[0, 3, 2]), ValueError, "outside the data buffer"),
        (dict(offsets=[0, 2, 6]), ValueError, "outside the data buffer"),
        (dict(offsets=[-1, 2]), ValueError, "outside the data buffer"),
        (dict(offsets=[]), ValueError, "offsets must be 1-D"),
        (dict(offsets=[[0, 2]]), ValueError, "offsets must be 1-D"),
        (dict(starts=[0, 1], lengths=[1]), ValueError, "same length"),
        (dict(starts=[-1], lengths=[1]), ValueError, "outside the data buffer"),
        (dict(starts=[0], lengths=[-1]), ValueError, "outside the data buffer"),
        (dict(starts=[4], lengths=[2]), ValueError, "outside the data buffer"),
        (dict(), TypeError, "needs offsets"),
        (dict(starts=[0]), TypeError, "needs offsets"),
        (dict(offsets=[0, 1], starts=[0], lengths=[1]), TypeError, "not both"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RaggedArray(np.zeros((5, 2)), **kwargs)


@pytest.mark.parametrize("data", [np.zeros(5), np.zeros((2, 3, 4)), 3.0])
def test_constructor_rejects_non_2d_data(data):
    with pytest.raises(ValueError, match="must be 2-D"):
        RaggedArray(data, [0, 1])


def test_from_list_errors():
    with pytest.raises(ValueError, match="empty list"):
        RaggedArray.from_list([])
    with pytest.raises(ValueError, match="text 1 has 1 dimension"):
        RaggedArray.from_list([np.zeros((2, 3)), np.zeros(3)])
    with pytest.raises(ValueError, match="text 0 has 3 dimension"):
        RaggedArray.from_list([np.zeros((1, 2, 3))])
    with pytest.raises(ValueError, match=r"text 1 has d_model=4 but text 0 has d_model=3"):
        RaggedArray.from_list([np.zeros((2, 3)), np.zeros((2, 4))])


@pytest.mark.parametrize("as_type", [bool, np.int64, np.float32, "torch"])
def test_from_padded_accepts_an_attention_mask(texts, X, as_type):
    padded, mask = X.to_padded()  # to_padded's own mask goes straight back in
    if as_type == "torch":
        torch = pytest.importorskip("torch")
        mask = torch.as_tensor(mask.astype(np.int64))
    else:
        mask = mask.astype(as_type)
    for back in (RaggedArray.from_padded(padded, mask),
                 RaggedArray.from_padded(padded, mask=mask)):
        np.testing.assert_array_equal(back.lengths, X.lengths)
        _assert_same_texts(back, texts)


def test_from_padded_mask_of_a_left_padded_batch(texts):
    # decoder-only batches are often padded on the left: the masked tokens,
    # in order, are the text
    lengths = [len(t) for t in texts]
    T, d = max(lengths), texts[0].shape[1]
    padded = np.full((len(texts), T, d), -7.0)
    mask = np.zeros((len(texts), T), dtype=np.int64)
    for i, t in enumerate(texts):
        padded[i, T - len(t):] = t
        mask[i, T - len(t):] = 1
    back = RaggedArray.from_padded(padded, mask)
    _assert_same_texts(back, texts)
    assert not (back.data == -7.0).any()


def test_from_padded_mask_errors():
    P = np.zeros((2, 4, 3))
    for mask in ([[1, 0, 1, 0], [1, 1, 1, 1]],   # a hole
                 [[0, 1, 1, 0], [1, 1, 1, 1]]):  # padded on both sides
        with pytest.raises(ValueError, match=r"mask row 0 \(1 row\(s\) in all\) is not padding"):
            RaggedArray.from_padded(P, np.array(mask))
    with pytest.raises(ValueError, match=r"only 0 and 1"):
        RaggedArray.from_padded(P, np.array([[2, 1, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match=r"mask has shape \(2, 3\) but X has shape \(2, 4, 3\)"):
        RaggedArray.from_padded(P, mask=np.ones((2, 3)))
    with pytest.raises(ValueError, match="not both"):
        RaggedArray.from_padded(P, [1, 1], mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"needs lengths \(n_texts,\) or mask"):
        RaggedArray.from_padded(P)
    with pytest.raises(ValueError, match="lengths must be integers"):
        RaggedArray.from_padded(P, [1.5, 2.0])


def test_from_padded_lengths_column_still_means_lengths():
    P = np.arange(24.0).reshape(2, 4, 3)
    back = RaggedArray.from_padded(P, np.array([[1], [3]]))
    np.testing.assert_array_equal(back.lengths, [1, 3])


def test_from_padded_errors():
    with pytest.raises(ValueError, match="3-D"):
        RaggedArray.from_padded(np.zeros((2, 3)), [1, 1])
    with pytest.raises(ValueError, match="lengths has 1 entries"):
        RaggedArray.from_padded(np.zeros((2, 3, 4)), [1])
    with pytest.raises(ValueError, match=r"lie in \[0, 3\]"):
        RaggedArray.from_padded(np.zeros((2, 3, 4)), [1, 4])
    with pytest.raises(ValueError, match=r"lie in \[0, 3\]"):
        RaggedArray.from_padded(np.zeros((2, 3, 4)), [-1, 2])


# -- properties (hypothesis) ---------------------------------------------------------
@st.composite
def ragged_arrays(draw, min_texts=0):
    lengths = draw(st.lists(st.integers(0, 5), min_size=min_texts, max_size=8))
    d = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    texts = [rng.normal(size=(n, d)).astype(dtype) for n in lengths]
    if not texts:
        X = RaggedArray(np.zeros((0, d), dtype=dtype), [0])
    else:
        X = RaggedArray.from_list(texts)
    return X, texts


def _index_for(draw, n):
    """A random text index of any supported kind for ``n`` texts."""
    kind = draw(st.sampled_from(["ints", "mask", "slice", "list"]))
    if kind == "mask":
        return np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)),
                        dtype=bool)
    if kind == "slice":
        bound = st.none() | st.integers(-n - 2, n + 2)
        step = st.none() | st.integers(-3, 3).filter(lambda s: s != 0)
        return slice(draw(bound), draw(bound), draw(step))
    if n == 0:
        return np.array([], dtype=np.int64) if kind == "ints" else []
    ints = draw(st.lists(st.integers(-n, n - 1), max_size=10))
    return np.array(ints, dtype=np.int64) if kind == "ints" else ints


@st.composite
def ragged_and_two_indices(draw):
    X, texts = draw(ragged_arrays(min_texts=1))
    n = len(texts)
    a = np.array(draw(st.lists(st.integers(-n, n - 1), max_size=10)), dtype=np.int64)
    b = _index_for(draw, len(a))
    return X, texts, a, b


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ragged_and_two_indices())
def test_indexing_composes(case):
    X, texts, a, b = case
    left = X[a][b]
    right = X[np.asarray(a)[b]]
    assert isinstance(left, RaggedArray) and isinstance(right, RaggedArray)
    assert left.data is X.data and right.data is X.data
    _assert_same_texts(left, right)
    positions = np.arange(len(texts))[a][b]
    _assert_same_texts(left, [texts[i] for i in positions])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ragged_arrays(min_texts=1), st.data())
def test_any_index_matches_numpy_semantics(case, data):
    X, texts = case
    key = _index_for(data.draw, len(texts))
    sel = X[key]
    positions = np.arange(len(texts))[key]
    _assert_same_texts(sel, [texts[i] for i in positions])
    assert sel.n_tokens == sum(texts[i].shape[0] for i in positions)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ragged_arrays(min_texts=1))
def test_round_trips(case):
    X, texts = case
    assert X.dtype == texts[0].dtype
    _assert_same_texts(X, texts)
    _assert_same_texts(RaggedArray.from_list(X.to_list()), texts)
    rev = X[::-1]
    packed = rev.pack()
    assert packed.is_packed and packed.dtype == X.dtype
    _assert_same_texts(packed, texts[::-1])
    assert len(packed.offsets) == len(texts) + 1
    if X.lengths.max() > 0:
        padded, mask = rev.to_padded()
        _assert_same_texts(RaggedArray.from_padded(padded, rev.lengths), texts[::-1])
        np.testing.assert_array_equal(mask.sum(axis=1), rev.lengths)
