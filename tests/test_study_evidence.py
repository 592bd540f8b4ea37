"""The study's evidence analysis (benchmarks/study/evidence.py): span-to-row
alignment, evidence recall, the oracle, and the command after a run."""

import csv

import numpy as np
import pytest

pytest.importorskip("benchmarks.study.evidence",
                    reason="run the tests from the repository root")
pytest.importorskip("transformers")
from benchmarks.study import evidence  # noqa: E402

from sklearn_attnprobe import AttentionProbeClassifier, RaggedArray  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    """Word-level, whitespace pre-tokenizer, a BOS token ``<s>`` in front."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "[UNK] [PAD] <s> the cat sat on a mat dog ran far away .".split()
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
                                      unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]",
                                   pad_token="[PAD]", bos_token="<s>")


def _span(text, part):
    start = text.index(part)
    return start, start + len(part)


def test_alignment_truncation_and_first_token(tokenizer):
    from sklearn_attnprobe.activations import token_strings

    texts = ["the cat sat . a dog ran far away .",      # span in the middle
             "a dog ran . the cat sat on a mat .",      # span at the start
             "the cat sat on a mat . a dog ran far ."]  # span cut off at max_length 8
    spans = [_span(texts[0], "a dog ran"), _span(texts[1], "a dog ran"),
             _span(texts[2], "a dog ran far")]
    rows, n_rows = evidence.evidence_rows(tokenizer, texts, spans, max_length=8,
                                          drop_first_token=True)
    tokens = token_strings(tokenizer, texts, max_length=8, drop_first_token=True)
    # one row per extracted activation row (8 tokens with <s>, minus the dropped <s>)
    assert n_rows.tolist() == [len(t) for t in tokens] == [7, 7, 7]
    assert [tokens[0][k] for k in rows[0]] == ["a", "dog", "ran"]
    assert [tokens[1][k] for k in rows[1]] == ["a", "dog", "ran"] and rows[1][0] == 0
    assert rows[2].size == 0  # the whole span lies past the truncation
    # a span partly cut off keeps the rows that survive
    part, _ = evidence.evidence_rows(tokenizer, texts[2:], [_span(texts[2], ". a dog")],
                                     max_length=8)
    assert [tokens[2][k] for k in part[0]] == ["."]
    # drop_first_token=True without a BOS drops the span's first word: no row for it
    plain, n = evidence.evidence_rows(tokenizer, texts[1:2], spans[1:2],
                                      add_special_tokens=False, max_length=8)
    assert plain[0].tolist() == [0, 1] and n.tolist() == [7]
    # the special BOS token is never evidence, even when it is not dropped
    kept, _ = evidence.evidence_rows(tokenizer, texts[1:2], [(0, 1)],
                                     drop_first_token=False)
    assert kept[0].tolist() == [1]


def test_evidence_json_round_trip(tokenizer, tmp_path):
    texts = ["the cat sat . a dog ran far away ."]
    path = evidence.write_evidence(tmp_path, tokenizer, texts,
                                   [_span(texts[0], "dog ran")], max_length=None)
    rows, n_rows = evidence.read_evidence(path.parent)
    assert rows[0].tolist() == [5, 6] and n_rows.tolist() == [10]


def test_evidence_recall_by_hand():
    weights = [np.array([[0.5, 0.1], [0.25, 0.1], [0.25, 0.8]]),
               np.array([[0.2, 1.0], [0.8, 0.0]])]
    recall = evidence.evidence_recall(weights, [np.array([0, 1]), np.array([1])])
    np.testing.assert_allclose(recall, [[0.75, 0.2], [0.8, 0.0]])
    mean_head, best, head = evidence.summarise_recall(recall)
    assert mean_head == pytest.approx((0.75 + 0.2 + 0.8 + 0.0) / 4)
    assert best == pytest.approx(0.775) and head == 0


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_evidence_recall_of_a_probe_with_set_weights():
    """Head 0's query reads feature 0 (on for evidence rows), head 1's is zero
    (uniform attention): recall k e^s / (k e^s + T - k) and k / T."""
    import torch

    rng = np.random.default_rng(0)
    X = [np.zeros((6, 3)), np.zeros((4, 3))]
    ev = [np.array([1, 2]), np.array([3])]
    for x, r in zip(X, ev):
        x[:, 1:] = rng.normal(size=(len(x), 2))
        x[r, 0] = 1.0
    probe = AttentionProbeClassifier(n_heads=2, max_iter=1, random_state=0)
    probe.fit(RaggedArray.from_list(X), np.array([0, 1]))
    s = 2.0
    with torch.no_grad():
        probe.module_.query.zero_()
        probe.module_.query[0, 0] = s
        probe.module_.slope.zero_()
    recall = evidence.evidence_recall(probe.attention_weights(RaggedArray.from_list(X)), ev)
    e = np.exp(s)
    np.testing.assert_allclose(recall, [[2 * e / (2 * e + 4), 2 / 6], [e / (e + 3), 1 / 4]],
                               rtol=1e-5)


def _planted(n=160, length=40, d=16, seed=0):
    """One evidence row per text carries the class (+/- a direction); the other
    rows are noise with a class-free drift, so the mean dilutes the signal."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    texts, ev = [], []
    for label in y:
        x = rng.normal(size=(length, d)) * 2.0
        k = rng.integers(length)
        x[k] += (3.0 if label else -3.0) * direction * 2.0
        texts.append(x.astype(np.float32))
        ev.append(np.array([k]))
    return RaggedArray.from_list(texts), y, ev


def test_oracle_beats_mean_pooling_and_handles_missing_evidence():
    from sklearn_attnprobe import MeanProbeClassifierCV

    X, y, ev = _planted()
    train, test = np.arange(1, 120), np.arange(120, 160)  # 60 of class 1, 59 of 0
    pred, n_fit = evidence.oracle_predictions(X, y, ev, train, test)
    oracle = (pred == y[test]).mean()
    mean = MeanProbeClassifierCV(weight_decays=(0, 1e-3, 1e-2, 1e-1), cv=5).fit(
        X[train], y[train]).score(X[test], y[test])
    assert n_fit == 119 and oracle >= 0.95 and oracle > mean + 0.2
    # texts without evidence rows: out of the fit, the majority class at test time
    ev = list(ev)
    for i in (2, 4, 6, 120, 122):  # three class-0 train texts, two class-0 test texts
        ev[i] = np.zeros(0, dtype=np.int64)
    pred, n_fit = evidence.oracle_predictions(X, y, ev, train, test)
    assert n_fit == 116
    assert pred[0] == pred[2] == 1  # class 1 is the majority of the training labels
    assert (pred == y[test]).mean() >= 0.9  # the two texts without evidence are wrong


def test_gap_closed():
    oracle = np.ones(100)
    pooled = np.r_[np.ones(60), np.zeros(40)]
    attn = np.r_[np.ones(80), np.zeros(20)]
    share, low, high = evidence.gap_closed(attn, pooled, oracle, n_boot=500)
    assert share == pytest.approx(0.5) and low <= 0.5 <= high
    assert evidence.gap_closed(attn, oracle, oracle, n_boot=50) == (None, None, None)


def test_append_to_results_replaces_its_own_section(tmp_path):
    path = tmp_path / "results.md"
    path.write_text("tables\n")
    evidence.append_to_results(path, "first")
    evidence.append_to_results(path, "second")
    text = path.read_text()
    assert text.startswith("tables\n\n") and "second" in text and "first" not in text


def _buildable(name):
    """``name``, or a skip where its source packages are missing."""
    from benchmarks.study import tasks

    try:
        tasks.build_task(name, n_per_class=2)
    except ValueError as exc:
        pytest.skip(str(exc))
    return name


def _read(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_study_run_then_the_command_after_the_fact(tmp_path, capsys):
    """A tiny-random run on a needle task writes the evidence outputs; with
    evidence.json removed (a run from before the analysis existed), the
    command rebuilds it from the tokenizer and gives the same numbers."""
    from benchmarks.study.run import main

    pytest.importorskip("matplotlib")
    name = _buildable("needle_start")
    argv = ["--model", "tiny-random", "--tasks", name, "--n-per-class", "15",
            "--layers", "1", "--methods", "mean", "last", "attn-1", "attn-8",
            "--max-iter", "10", "--n-jobs", "1", "--out", str(tmp_path)]
    main(argv)
    printed = capsys.readouterr().out
    for f in evidence.OUTPUTS:
        assert (tmp_path / f).exists() and f"  {f}" in printed
    rows = _read(tmp_path / "evidence.csv")
    assert [r["method"] for r in rows] == ["oracle", "mean", "last", "attn-1", "attn-8"]
    attn8 = rows[-1]
    assert 0 < float(attn8["uniform_share"]) < 1
    assert 0 <= float(attn8["recall_mean_head"]) <= float(attn8["recall_best_head"]) <= 1
    assert rows[1]["recall_mean_head"] == ""
    ivs = _read(tmp_path / "evidence_intervals.csv")
    assert [r["quantity"] for r in ivs] == ["oracle - best pooled", "attn-8 - best pooled",
                                           "gap closed by attn-8"]
    assert "Evidence recall" in (tmp_path / "results.md").read_text()

    [ev_file] = (tmp_path / "cache").rglob(evidence.EVIDENCE_FILE)
    before = ev_file.read_text()
    ev_file.unlink()
    (tmp_path / "evidence.csv").unlink()
    evidence.main(["--out", str(tmp_path)])
    assert ev_file.read_text() == before
    assert _read(tmp_path / "evidence.csv") == rows
    assert _read(tmp_path / "evidence_intervals.csv") == ivs
    md = (tmp_path / "results.md").read_text()
    assert md.count("Evidence recall") == 1
