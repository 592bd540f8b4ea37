"""Extraction of hidden states (sklearn_attnprobe.activations) on tiny models.

Everything here is offline and fast: the tokenizers are WordLevel
``tokenizers`` models trained in this file on a few sentences, and the models
are randomly initialised 2-layer BERT / GPT-2 / Llama built from configs
(hidden size 32). Skipped when the ``hf`` extra (transformers) is missing.
"""

import contextlib
import glob
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="needs the [hf] extra")
tokenizers = pytest.importorskip("tokenizers", reason="needs the [hf] extra")

from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

from sklearn_attnprobe import (  # noqa: E402
    ActivationScaler,
    AttentionProbeClassifier,
    RaggedArray,
)
from sklearn_attnprobe.activations import (  # noqa: E402
    TransformerActivations,
    clear_memory_cache,
    extract_activations,
    set_memory_cache_limit,
)
from sklearn_attnprobe.activations._encoder import length_batches  # noqa: E402

WORDS = ("the a cat dog sat ran on in mat park good great fun bad awful plot "
         "movie film was very not really quite and but").split()
CORPUS = [
    "the cat sat on the mat", "a dog ran in the park", "good movie great fun",
    "bad film awful plot", "the movie was very good", "not really a great film",
    "quite bad and awful", "the dog was fun but the plot was bad",
]
D = 32


def _texts(n, seed=0, lo=1, hi=14):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(lo, hi)))
            for _ in range(n)]


def _tokenizer(template):
    """A PreTrainedTokenizerFast built offline: WordLevel + whitespace."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS + [" ".join(WORDS)],
                            trainers.WordLevelTrainer(special_tokens=specials))
    ids = {s: tok.token_to_id(s) for s in specials}
    # like GPT-2's and Llama's tokenizers, only BERT's returns token_type_ids
    kw = {"unk_token": "[UNK]", "model_input_names": ["input_ids", "attention_mask"]}
    if template == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
        kw.update(pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                  model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    elif template == "bos":  # Llama-like: BOS first, no pad token
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", ids["<s>"])])
        kw.update(bos_token="<s>")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


def _model(kind, vocab):
    torch.manual_seed({"bert": 1, "gpt2": 2, "llama": 3}[kind])
    if kind == "bert":
        cfg = transformers.BertConfig(
            vocab_size=vocab, hidden_size=D, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=48, max_position_embeddings=64)
        return transformers.BertModel(cfg)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=D, n_layer=2,
                                      n_head=4, n_positions=64, bos_token_id=None,
                                      eos_token_id=None)
        return transformers.GPT2Model(cfg)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return transformers.LlamaForCausalLM(cfg)


TOKENIZER_OF = {"bert": "bert", "gpt2": "plain", "llama": "bos"}


@pytest.fixture(scope="module")
def zoo():
    toks = {t: _tokenizer(t) for t in ("bert", "plain", "bos")}
    return {kind: (_model(kind, len(toks[TOKENIZER_OF[kind]])),
                   toks[TOKENIZER_OF[kind]])
            for kind in ("bert", "gpt2", "llama")}


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    clear_memory_cache()
    yield
    clear_memory_cache()


@contextlib.contextmanager
def count_texts(model):
    """Record the batch size of every forward pass the extraction runs."""
    net = model.base_model
    calls = []
    h = net.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True)
    try:
        yield calls
    finally:
        h.remove()


def _reference(model, tokenizer, text, layers):
    """Hidden states of one text run alone, straight through the model."""
    enc = tokenizer([text], return_tensors="pt")  # what model(**enc) gets
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model.base_model(**enc, output_hidden_states=True)
    model.train(was)
    return [out.hidden_states[k][0].numpy() for k in layers]


# -- extraction -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_lengths_are_true_token_counts(zoo, kind):
    model, tok = zoo[kind]
    texts = _texts(11, seed=1)
    out = extract_activations(model, tok, texts, layers=[0, 1, -1])
    assert isinstance(out, list) and len(out) == 3
    expected = [len(ids) for ids in tok(texts)["input_ids"]]
    for r in out:
        assert isinstance(r, RaggedArray)
        assert r.shape == (11, None, D)
        assert r.lengths.tolist() == expected
        assert r.is_packed
    single = extract_activations(model, tok, texts, layers=1)
    assert isinstance(single, RaggedArray)
    assert_array_equal(single.data, out[1].data)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_batched_equals_each_text_alone(zoo, kind, side):
    """Padding never leaks in and positions are right, whatever padding_side."""
    model, tok = zoo[kind]
    tok.padding_side = side
    try:
        texts = _texts(13, seed=2)
        # batch_size=4: batches mix texts of different lengths
        out = extract_activations(model, tok, texts, layers=[0, 2], dtype="float32",
                                  batch_size=4)
    finally:
        tok.padding_side = "right"
    for i, text in enumerate(texts):
        for r, ref in zip(out, _reference(model, tok, text, [0, 2])):
            assert_allclose(r[i], ref, rtol=1e-4, atol=1e-5)


def test_naive_left_padding_would_be_caught(zoo):
    """Sanity check of the reference: a left-padded GPT-2 batch without
    position fix-ups shifts positions, and the comparison above sees it."""
    model, tok = zoo["gpt2"]
    texts = ["the cat", "the dog ran in the park and the cat sat"]
    ids = tok(texts)["input_ids"]
    L = max(map(len, ids))
    input_ids = torch.tensor([[0] * (L - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (L - len(x)) + [1] * len(x) for x in ids])
    model.eval()
    with torch.no_grad():
        h = model(input_ids=input_ids, attention_mask=mask,
                  output_hidden_states=True).hidden_states[-1]
    model.train()
    naive = h[0][mask[0].bool()].numpy()
    ref = _reference(model, tok, texts[0], [-1])[0]
    assert not np.allclose(naive, ref, atol=1e-3)


def test_layer_indices(zoo):
    model, tok = zoo["bert"]
    texts = _texts(3, seed=3)
    a = extract_activations(model, tok, texts, layers=[-1, 2, 0], dtype="float32")
    assert_array_equal(a[0].data, a[1].data)  # -1 is layer 2 of a 2-layer model
    assert not np.allclose(a[1].data, a[2].data)
    for bad in (3, -4):
        with pytest.raises(ValueError, match="out of range"):
            extract_activations(model, tok, texts, layers=bad)
    for bad in ([], 1.5, "1", [1, 2.0], True):
        with pytest.raises(ValueError, match="layers must be"):
            extract_activations(model, tok, texts, layers=bad)


def test_drop_first_token(zoo):
    model, tok = zoo["llama"]
    texts = _texts(7, seed=4)
    full = extract_activations(model, tok, texts, dtype="float32")
    dropped = extract_activations(model, tok, texts, dtype="float32",
                                  drop_first_token=True)
    assert_array_equal(dropped.lengths, full.lengths - 1)
    for i in range(len(texts)):
        assert_allclose(dropped[i], full[i][1:], rtol=1e-4, atol=1e-5)


def test_drop_first_token_special_keeps_real_words(zoo):
    """"special" drops a BOS (llama's tokenizer here) and keeps the first word of
    a tokenizer that adds none (gpt2's here, like SmolLM2's GGUF tokenizer),
    where True would drop the word."""
    from sklearn_attnprobe.activations import token_strings

    texts = _texts(6, seed=4, lo=2)
    for kind, expect_drop in (("llama", True), ("gpt2", False), ("bert", True)):
        model, tok = zoo[kind]
        full = extract_activations(model, tok, texts, dtype="float32")
        special = extract_activations(model, tok, texts, dtype="float32",
                                      drop_first_token="special")
        assert_array_equal(special.lengths, full.lengths - int(expect_drop))
        for i in range(len(texts)):
            assert_allclose(special[i], full[i][int(expect_drop):], rtol=1e-4, atol=1e-5)
        tokens, dropped = token_strings(tok, texts, drop_first_token="special",
                                        return_dropped=True)
        assert [len(t) for t in tokens] == list(special.lengths)
        first = {"llama": "<s>", "bert": "[CLS]"}.get(kind)
        assert dropped == [first] * len(texts)
        # True drops whatever comes first: a real word for gpt2's tokenizer
        tokens, dropped = token_strings(tok, texts, drop_first_token=True,
                                        return_dropped=True)
        assert all(d is not None for d in dropped)
        if kind == "gpt2":
            assert dropped == [t.split()[0] for t in texts]
    # the transformer takes the option too, and its cache key tells them apart
    model, tok = zoo["gpt2"]
    a = TransformerActivations(model, tok, drop_first_token="special", dtype="float32")
    b = TransformerActivations(model, tok, drop_first_token=True, dtype="float32")
    assert_array_equal(a.transform(texts).lengths - 1, b.transform(texts).lengths)
    with pytest.raises(ValueError, match=r"drop_first_token must be True, False or 'special'"):
        extract_activations(model, tok, texts, drop_first_token="bos")


def test_max_length_truncates(zoo):
    model, tok = zoo["llama"]  # causal: a truncated text is a prefix
    texts = _texts(9, seed=5, lo=4, hi=14)
    full = extract_activations(model, tok, texts, dtype="float32")
    cut = extract_activations(model, tok, texts, dtype="float32", max_length=5)
    assert_array_equal(cut.lengths, np.minimum(full.lengths, 5))
    for i in range(len(texts)):
        assert_allclose(cut[i], full[i][: cut.lengths[i]], rtol=1e-4, atol=1e-5)
    both = extract_activations(model, tok, texts, max_length=5, drop_first_token=True)
    assert_array_equal(both.lengths, np.minimum(full.lengths, 5) - 1)


def test_too_short_texts_raise(zoo):
    model, tok = zoo["gpt2"]  # no special tokens
    with pytest.raises(ValueError, match="text 1 .* needs at least 2"):
        extract_activations(model, tok, ["the cat", "dog"], drop_first_token=True)
    with pytest.raises(ValueError, match="text 0 .*0 token"):
        extract_activations(model, tok, [""])


def test_float16_default_and_overflow_warning(zoo):
    model, tok = zoo["bert"]
    texts = _texts(5, seed=6)
    half = extract_activations(model, tok, texts)
    full = extract_activations(model, tok, texts, dtype="float32")
    assert half.dtype == np.float16 and full.dtype == np.float32
    assert_allclose(half.data.astype(np.float32), full.data, rtol=1e-2, atol=1e-2)
    assert extract_activations(model, tok, texts, dtype=np.float64).dtype == np.float64
    for bad in ("bfloat16", torch.float16, "int8"):
        with pytest.raises(ValueError, match="dtype must be one of"):
            extract_activations(model, tok, texts, dtype=bad)

    big = _model("bert", len(tok))
    with torch.no_grad():
        big.embeddings.LayerNorm.weight.mul_(1e6)  # after the norm
    with pytest.warns(RuntimeWarning, match="overflowed float16"):
        extract_activations(big, tok, texts, layers=0)


def test_length_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 400, size=500)
    batches = length_batches(lengths, batch_size=16, max_batch_tokens=1024)
    assert_array_equal(np.sort(np.concatenate(batches)), np.arange(500))
    padded = 0
    for b in batches:
        assert len(b) <= 16
        longest = lengths[b].max()
        assert len(b) == 1 or len(b) * longest <= 1024
        padded += len(b) * longest
    assert padded < 1.1 * lengths.sum()  # sorted by length: little padding
    assert [len(b) for b in length_batches([5, 1, 3], 8, None)] == [3]


def test_model_mode_device_progress_and_determinism(zoo, capsys):
    model, tok = zoo["bert"]
    model.train()  # dropout on: extraction must switch it off, then restore
    texts = _texts(4, seed=7)
    a = extract_activations(model, tok, texts, dtype="float32", device="cpu",
                            progress=True)
    assert "activations" in capsys.readouterr().err  # the tqdm bar
    b = extract_activations(model, tok, texts, dtype="float32", progress=False)
    assert capsys.readouterr().err == ""
    assert model.training
    assert_array_equal(a.data, b.data)
    # the model stays trainable (no inference tensors left in it)
    out = model(input_ids=torch.tensor([[2, 5, 3]])).last_hidden_state
    out.sum().backward()
    assert model.embeddings.word_embeddings.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_text_input_forms(zoo):
    pd = pytest.importorskip("pandas")
    model, tok = zoo["bert"]
    texts = _texts(3, seed=8)
    ref = extract_activations(model, tok, texts).data
    for form in (tuple(texts), np.array(texts), np.array(texts, dtype=object),
                 pd.Series(texts), np.array(texts)[:, None]):
        assert_array_equal(extract_activations(model, tok, form).data, ref)
    with pytest.raises(TypeError, match="single string"):
        extract_activations(model, tok, "the cat")
    with pytest.raises(TypeError, match="text 1 is a int"):
        extract_activations(model, tok, ["the cat", 3])
    with pytest.raises(ValueError, match="no texts"):
        extract_activations(model, tok, [])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        extract_activations("bert", tok, texts)


# -- on-disk cache ---------------------------------------------------------------
def _folders(root):
    return sorted(glob.glob(os.path.join(root, "activations-*")))


def test_cache_roundtrip_is_memory_mapped(zoo, tmp_path):
    model, tok = zoo["bert"]
    texts = _texts(10, seed=9)
    ref = extract_activations(model, tok, texts, layers=[1, 2])
    got = extract_activations(model, tok, texts, layers=[1, 2], cache_dir=tmp_path,
                              shard_size=3, batch_size=2)
    for r, g in zip(ref, got):
        assert_array_equal(g.lengths, r.lengths)
        assert_allclose(g.data, r.data, rtol=2e-3, atol=1e-3)
        assert isinstance(g.data, np.memmap) and not g.data.flags.writeable
    (folder,) = _folders(tmp_path)
    names = sorted(os.listdir(folder))
    assert "layer-0001.npy" in names and "layer-0002.npy" in names
    assert not [n for n in names if ".layer-" in n or n.endswith(".tmp")]
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert meta["merged"] and meta["complete_shards"] == [0, 1, 2, 3]
    assert meta["layers"] == [1, 2] and meta["d_model"] == D
    spec = meta["spec"]
    assert spec["texts"]["n"] == 10 and spec["dtype"] == "float16"
    assert spec["model"]["class"] == "BertModel" and meta["shard_size"] == 3
    with count_texts(model) as calls:
        again = extract_activations(model, tok, texts, layers=[1, 2], cache_dir=tmp_path)
    assert sum(calls) == 0  # loaded, not recomputed, despite another shard_size
    assert_array_equal(again[0].data, got[0].data)


def test_cache_resumes_after_interruption(zoo, tmp_path):
    model, tok = zoo["llama"]
    texts = _texts(10, seed=10)
    ref = extract_activations(model, tok, texts, layers=[0, -1])
    kw = dict(layers=[0, -1], cache_dir=tmp_path, shard_size=3, batch_size=2)

    n_calls = []

    def boom(mod, args, kwargs):
        n_calls.append(1)
        if len(n_calls) == 5:  # shards 0 and 1 take 2 passes each
            raise KeyboardInterrupt("simulated crash")

    h = model.base_model.register_forward_pre_hook(boom, with_kwargs=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            extract_activations(model, tok, texts, **kw)
    finally:
        h.remove()
    (folder,) = _folders(tmp_path)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert meta["complete_shards"] == [0, 1] and not meta["merged"]
    names = os.listdir(folder)
    assert not [n for n in names if n.endswith(".tmp")]  # cleaned up
    assert not [n for n in names if n.startswith("shard-00002")]

    # what a hard kill could leave: a shard file renamed into place but not
    # yet listed in meta.json (garbage here), and a dead process's temp file
    junk = os.path.join(folder, "shard-00002.layer-0000.npy")
    with open(junk, "wb") as fh:
        fh.write(b"\x93NUMPY garbage")
    stale = os.path.join(folder, ".shard-00003.layer-0002.npy.999999999.deadbeef.tmp")
    with open(stale, "wb") as fh:
        fh.write(b"partial")

    with count_texts(model) as calls:
        got = extract_activations(model, tok, texts, **kw)
    assert sum(calls) == 4  # shards 2 (3 texts) and 3 (1 text) only
    for r, g in zip(ref, got):
        assert_array_equal(g.lengths, r.lengths)
        assert_allclose(g.data, r.data, rtol=2e-3, atol=1e-3)
    assert not os.path.exists(stale)


def test_cache_resumes_an_interrupted_merge(zoo, tmp_path, monkeypatch):
    from sklearn_attnprobe.activations._cache import ShardedCache

    model, tok = zoo["bert"]
    texts = _texts(7, seed=17)
    kw = dict(layers=[0, 1, 2], cache_dir=tmp_path, shard_size=2)
    ref = extract_activations(model, tok, texts, layers=[0, 1, 2])
    real = ShardedCache._merge_layer
    merged = []

    def crash_on_second(self, layer, *args):
        if merged:
            raise OSError("disk full (simulated)")
        merged.append(layer)
        return real(self, layer, *args)

    monkeypatch.setattr(ShardedCache, "_merge_layer", crash_on_second)
    with pytest.raises(OSError, match="simulated"):
        extract_activations(model, tok, texts, **kw)
    monkeypatch.setattr(ShardedCache, "_merge_layer", real)
    (folder,) = _folders(tmp_path)
    names = os.listdir(folder)
    assert "layer-0000.npy" in names and "layer-0001.npy" not in names
    assert not [n for n in names if n.endswith(".tmp")]
    assert not [n for n in names if n.endswith(".layer-0000.npy")]  # dropped
    with count_texts(model) as calls:
        got = extract_activations(model, tok, texts, **kw)
    assert sum(calls) == 0
    for r, g in zip(ref, got):
        assert_array_equal(g.lengths, r.lengths)
        assert_allclose(g.data, r.data, rtol=2e-3, atol=1e-3)
    assert sorted(os.listdir(folder)) == ["layer-0000.npy", "layer-0001.npy",
                                          "layer-0002.npy", "meta.json",
                                          "offsets.npy"] + [
        f"shard-{i:05d}.lengths.npy" for i in range(4)]


def test_cache_separates_options_and_texts(zoo, tmp_path):
    model, tok = zoo["gpt2"]
    texts = _texts(6, seed=11, lo=3)
    a = extract_activations(model, tok, texts, cache_dir=tmp_path)
    b = extract_activations(model, tok, texts, cache_dir=tmp_path, max_length=2)
    with count_texts(model) as calls:  # the truncation state that b's call left
        b2 = extract_activations(model, tok, texts, cache_dir=tmp_path, max_length=2)
    assert sum(calls) == 0  # in the tokenizer is not a change of tokenizer
    assert_array_equal(b2.data, b.data)
    c = extract_activations(model, tok, texts[:-1], cache_dir=tmp_path)
    d = extract_activations(model, tok, texts, cache_dir=tmp_path,
                            drop_first_token=True)
    other = _model("gpt2", len(tok))  # same config, other weights
    torch.manual_seed(99)
    with torch.no_grad():
        for p in other.parameters():
            p.normal_()
    e = extract_activations(other, tok, texts, cache_dir=tmp_path)
    assert len(_folders(tmp_path)) == 5
    assert b.lengths.max() == 2 and len(c) == 5
    assert_array_equal(d.lengths, a.lengths - 1)
    assert not np.allclose(e.data.astype(float), a.data.astype(float))
    assert_array_equal(extract_activations(model, tok, texts).data, a.data)


# -- the sklearn transformer ---------------------------------------------------------
def test_transformer_is_an_estimator(zoo):
    model, tok = zoo["bert"]
    est = TransformerActivations(model, tok, layer=1, max_length=8)
    params = est.get_params()
    assert params["model"] is model and params["layer"] == 1
    assert params["dtype"] == "float16" and params["memory_cache"] is True
    twin = clone(est)
    assert twin.model is model and twin.tokenizer is tok  # shared, not copied
    assert twin.get_params()["max_length"] == 8 and twin is not est
    assert est.set_params(layer=-1) is est and est.layer == -1
    texts = _texts(5, seed=12)
    assert est.fit(texts) is est and est.layers_ == (2,)
    out = est.transform(texts)
    assert isinstance(out, RaggedArray) and out.shape == (5, None, D)
    assert_array_equal(out.data, extract_activations(model, tok, texts,
                                                     max_length=8).data)
    assert_array_equal(TransformerActivations(model, tok).fit_transform(texts).data,
                       extract_activations(model, tok, texts).data)


def test_transformer_several_layers_side_by_side(zoo):
    model, tok = zoo["gpt2"]
    texts = _texts(4, seed=13)
    out = TransformerActivations(model, tok, layer=[0, 2]).transform(texts)
    a, b = extract_activations(model, tok, texts, layers=[0, 2])
    assert out.shape == (4, None, 2 * D)
    assert_array_equal(out.data, np.concatenate([a.data, b.data], axis=1))


def test_memory_cache_encodes_each_text_once(zoo):
    model, tok = zoo["llama"]
    texts = _texts(12, seed=14)
    est = TransformerActivations(model, tok, batch_size=4)
    with count_texts(model) as calls:
        first = est.transform(texts[:8])
    assert sum(calls) == 8
    with count_texts(model) as calls:
        mixed = est.transform(texts[::-1] + texts[:2])  # 4 new, duplicates
    assert sum(calls) == 4
    ref = extract_activations(model, tok, texts[::-1] + texts[:2])
    assert_array_equal(mixed.lengths, ref.lengths)
    assert_allclose(mixed.data, ref.data, rtol=2e-3, atol=1e-3)
    with count_texts(model) as calls:
        again = clone(est).transform(texts[:8])
    assert sum(calls) == 0
    assert_array_equal(again.data, first.data)
    with count_texts(model) as calls:
        TransformerActivations(model, tok, memory_cache=False).transform(texts[:3])
        est.set_params(max_length=3).transform(texts[:3])  # other options
    assert sum(calls) == 6
    old = set_memory_cache_limit(0)
    try:
        clear_memory_cache()
        with count_texts(model) as calls:
            est.transform(texts[:2])
            est.transform(texts[:2])
        assert sum(calls) == 4
    finally:
        set_memory_cache_limit(old)


def test_pipeline_grid_search_from_raw_texts(zoo, tmp_path):
    model, tok = zoo["bert"]
    rng = np.random.default_rng(15)
    pos = ["good", "great", "fun"]
    neg = ["bad", "awful", "not"]
    texts, y = [], []
    for i in range(24):
        label = i % 2
        words = list(rng.choice(WORDS[:12], size=rng.integers(2, 6)))
        words.insert(int(rng.integers(0, len(words))), (pos if label else neg)[i % 3])
        texts.append(" ".join(words))
        y.append(label)
    y = np.array(y)
    pipe = Pipeline([
        ("acts", TransformerActivations(model, tok, layer=1, cache_dir=tmp_path)),
        ("scale", ActivationScaler()),
        ("probe", AttentionProbeClassifier(n_heads=2, max_iter=30, random_state=0)),
    ])
    search = GridSearchCV(pipe, {"probe__weight_decay": [0.0, 0.1],
                                 "scale__with_std": [True, False]}, cv=3)
    with count_texts(model) as calls:
        search.fit(texts, y)
    # 4 candidates x 3 folds x (fit + score) + refit, yet each text once
    assert sum(calls) == len(set(texts))
    assert search.best_estimator_.named_steps["acts"].model is model
    pred = search.predict(["good fun", "awful plot"])
    assert pred.shape == (2,) and set(pred) <= {0, 1}
    assert 0 <= search.score(texts, y) <= 1
    assert _folders(tmp_path)  # the on-disk cache was used too


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_extraction_leaves_no_hooks_and_a_picklable_model(zoo, kind):
    """Hidden states come from forward pre-hooks removed through their handles;
    the model is never asked for output_hidden_states, so transformers installs
    none of its own capture hooks and a used model pickles as it is."""
    _, tok = zoo[kind]
    model = _model(kind, len(tok))  # fresh: not run with output_hidden_states
    assert _hooks(model) == 0
    est = TransformerActivations(model, tok, layer=[0, 1, 2], memory_cache=False,
                                 dtype="float32")
    ref = est.transform(_texts(4, seed=16))
    assert _hooks(model) == 0
    assert not any(getattr(m, "_output_capturing_hooks_installed", False)
                   for m in model.modules())
    twin = pickle.loads(pickle.dumps(est))
    assert_array_equal(twin.transform(_texts(4, seed=16)).data, ref.data)


def test_hidden_states_match_output_hidden_states(zoo):
    """The pre-hook reading equals transformers' own hidden_states at every index."""
    from sklearn_attnprobe.activations._encoder import Encoder

    for kind in ("bert", "gpt2", "llama"):
        model, tok = zoo[kind]
        enc = Encoder(model, tok, layers=[0, 1, 2], dtype="float32")
        assert enc.stack is not None  # the hook path, not the fallback
        text = _texts(1, seed=21, lo=5)[0]
        got = extract_activations(model, tok, [text], layers=[0, 1, 2], dtype="float32",
                                  progress=False)
        for g, r in zip(got, _reference(model, tok, text, [0, 1, 2])):
            assert_allclose(g[0], r, rtol=1e-5, atol=1e-5)


def test_fallback_without_a_block_stack(zoo, monkeypatch):
    """A model whose blocks are not found runs with output_hidden_states=True
    (the version-specific path in _hf_compat) and gives the same states."""
    from sklearn_attnprobe.activations import _hf_compat

    model, tok = zoo["gpt2"]
    texts = _texts(3, seed=22)
    ref = extract_activations(model, tok, texts, layers=[1, 2], dtype="float32",
                              progress=False)
    monkeypatch.setattr(_hf_compat, "find_layer_stack", lambda net, n: None)
    got = extract_activations(model, tok, texts, layers=[1, 2], dtype="float32",
                              progress=False)
    for g, r in zip(got, ref):
        assert_allclose(g.data, r.data, rtol=1e-5, atol=1e-5)
    assert _hf_compat.remove_capture_hooks(model) is False  # already removed


def test_hf_compat_version_gates(monkeypatch):
    from sklearn_attnprobe.activations import _hf_compat

    v = _hf_compat.transformers_version()
    assert v == tuple(int(x) for x in transformers.__version__.split(".")[:2])
    assert _hf_compat._has_output_capturing() == (v >= (5, 0))
    # on transformers 4 the workarounds do nothing and all states are requested
    monkeypatch.setattr(_hf_compat, "transformers_version", lambda: (4, 57))
    assert _hf_compat._has_output_capturing() is False
    assert _hf_compat.hidden_states_request([1, 2]) is True
    assert _hf_compat.remove_capture_hooks(torch.nn.Linear(2, 2)) is False
    _hf_compat.ensure_capture_registry(torch.nn.Linear(2, 2))


def test_pickle_and_fresh_process(zoo):
    """An unpickled model still returns hidden states where transformers' per-process
    registry lacks its class (a joblib worker that never built the model, as in
    GridSearchCV(n_jobs=2)): the pre-hooks need no registry."""
    oc = pytest.importorskip("transformers.utils.output_capturing")
    if not hasattr(oc, "_CAN_RECORD_REGISTRY"):
        pytest.skip("this transformers has no output-capturing registry")
    _, tok = zoo["bert"]
    model = _model("bert", len(tok))
    texts = _texts(4, seed=16)
    est = TransformerActivations(model, tok, memory_cache=False)
    ref = est.transform(texts)
    twin = pickle.loads(pickle.dumps(est))
    saved = dict(oc._CAN_RECORD_REGISTRY)
    oc._CAN_RECORD_REGISTRY.clear()
    try:
        assert_array_equal(twin.transform(texts).data, ref.data)
        # and the extraction wrote nothing into transformers' private registry
        assert len(oc._CAN_RECORD_REGISTRY) == 0
    finally:
        oc._CAN_RECORD_REGISTRY.update(saved)


def test_fingerprint_sees_one_weight_deep_inside_a_tensor():
    from sklearn_attnprobe.activations._cache import model_fingerprint

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 500), torch.nn.Linear(500, 4))
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        model[0].weight[217, 123] += 1e-3  # not in the first values nor the sample
    after = model_fingerprint(model)
    assert after["weights"] != before["weights"]
    with torch.no_grad():
        model[0].weight[217, 123] -= 1e-3
        w = model[0].weight
        w[[10, 11]] = w[[11, 10]]  # two rows swapped: same sums, other positions
    assert model_fingerprint(model)["weights"] not in (before["weights"], after["weights"])


def test_fingerprint_never_uses_the_object_id():
    from sklearn_attnprobe.activations._cache import model_fingerprint

    a = torch.nn.Linear(3, 2)
    b = pickle.loads(pickle.dumps(a))  # same weights, another object
    assert model_fingerprint(a) == model_fingerprint(b)
    meta = torch.nn.Linear(3, 2, device="meta")  # values cannot be read
    fp = model_fingerprint(meta)
    assert fp == model_fingerprint(meta)  # stable for the object ...
    assert fp != model_fingerprint(torch.nn.Linear(3, 2, device="meta"))  # ... unique


def test_package_imports_without_transformers():
    """``import sklearn_attnprobe`` (and the activations subpackage) work where
    transformers cannot be imported, and neither imports it."""
    code = """if True:
        import sys
        from importlib.abc import MetaPathFinder

        class Block(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("transformers", "tokenizers"):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Block())
        import sklearn_attnprobe
        from sklearn_attnprobe.activations import (
            TransformerActivations, extract_activations)
        assert "transformers" not in sys.modules
        """
    subprocess.run([sys.executable, "-c", code], check=True)


# -- token strings ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_token_strings_match_activation_rows(zoo, kind):
    from sklearn_attnprobe.activations import token_strings

    model, tok = zoo[kind]
    texts = _texts(9, seed=6, lo=2, hi=14)
    for drop in (False, True):
        for max_length in (None, 5):
            acts = extract_activations(model, tok, texts, max_length=max_length,
                                       drop_first_token=drop)
            strings = token_strings(tok, texts, max_length=max_length,
                                    drop_first_token=drop)
            assert [len(s) for s in strings] == acts.lengths.tolist()
            assert all(isinstance(t, str) for s in strings for t in s)
            ids = tok(texts, truncation=max_length is not None,
                      max_length=max_length)["input_ids"]
            assert strings == [tok.convert_ids_to_tokens(x)[int(drop):] for x in ids]
            trans = TransformerActivations(model, tok, max_length=max_length,
                                           drop_first_token=drop).fit_transform(texts)
            assert_array_equal(trans.lengths, acts.lengths)
    first = token_strings(tok, texts)[0][0]
    assert first == {"bert": "[CLS]", "gpt2": texts[0].split()[0], "llama": "<s>"}[kind]
    decoded = token_strings(tok, texts[:2], decode=True)
    assert [len(s) for s in decoded] == [len(s) for s in token_strings(tok, texts[:2])]


def test_token_strings_bad_input(zoo):
    from sklearn_attnprobe.activations import token_strings

    _, tok = zoo["llama"]
    with pytest.raises(TypeError, match="single string"):
        token_strings(tok, "the cat")
    with pytest.raises(TypeError, match="tokenizer"):
        token_strings(None, ["the cat"])
    with pytest.raises(ValueError, match="max_length"):
        token_strings(tok, ["the cat"], max_length=0)
    _, plain = zoo["gpt2"]  # no special tokens: "dog" is one token
    with pytest.raises(ValueError, match="text 1 .* needs at least 2"):
        token_strings(plain, ["the cat", "dog"], drop_first_token=True)


def test_max_activating_examples_from_raw_texts(zoo):
    from sklearn_attnprobe.activations import token_strings
    from sklearn_attnprobe.inspection import max_activating_examples

    model, tok = zoo["bert"]
    texts = _texts(30, seed=7, lo=2, hi=10)
    y = np.array(["good" in t or "great" in t for t in texts])
    y[:2] = [True, False]
    pipe = Pipeline([
        ("acts", TransformerActivations(model, tok, drop_first_token=True,
                                        dtype="float32")),
        ("scale", ActivationScaler()),
        ("probe", AttentionProbeClassifier(max_iter=30, random_state=0)),
    ]).fit(texts, y)
    tokens = token_strings(tok, texts, drop_first_token=True)
    found = max_activating_examples(pipe, texts, tokens, n_examples=4, context=2)
    e = found.attention[0][0]
    assert e.window_tokens[e.focus] == tokens[e.text][e.token]
    assert "[CLS]" not in found.to_text()
    with pytest.raises(ValueError, match="text 0 has"):
        max_activating_examples(pipe, texts, token_strings(tok, texts))
