"""Maximum activating examples and token contributions (sklearn_attnprobe.inspection)."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.utils import check_random_state

from sklearn_attnprobe import (
    ActivationScaler,
    AttentionProbeClassifier,
    MeanProbeClassifier,
    RaggedArray,
)
from sklearn_attnprobe import _inspection_scan
from sklearn_attnprobe.datasets import make_planted_task
from sklearn_attnprobe.inspection import (
    MaxActivatingExamples,
    max_activating_examples,
    token_contributions,
)

N_TEXTS = 200


def needle_positions(n_texts, *, d_model=32, n_classes=2, min_length=8,
                     max_length=48, random_state=0, return_noise=False):
    """Where make_planted_task("needle", ...) put each text's needle.

    The dataset does not return the positions; this replays its random draws
    in the same order (directions, labels, lengths, noise, positions).
    """
    rng = check_random_state(random_state)
    rng.standard_normal((n_classes + 1, d_model))
    rng.permutation(n_texts)
    lengths = rng.randint(min_length, max_length + 1, size=n_texts)
    noise = rng.standard_normal((int(lengths.sum()), d_model))
    pos = (rng.random_sample(n_texts) * lengths).astype(int)
    return (pos, lengths, noise) if return_noise else pos


@pytest.fixture(scope="module")
def binary():
    X, y = make_planted_task("needle", n_texts=N_TEXTS, random_state=0)
    probe = AttentionProbeClassifier(n_heads=2, max_iter=200, random_state=0).fit(X, y)
    return X, y, probe


@pytest.fixture(scope="module")
def multiclass():
    X, y = make_planted_task("needle", n_texts=N_TEXTS, n_classes=3, random_state=0)
    probe = AttentionProbeClassifier(n_heads=2, max_iter=200, random_state=0).fit(X, y)
    return X, y, probe


def _tokens(X):
    return [[f"w{i}_{t}" for t in range(len(x))] for i, x in enumerate(X)]


def test_needle_positions_replay_the_dataset():
    X, _ = make_planted_task("needle", n_texts=50, random_state=3)
    pos, lengths, noise = needle_positions(50, random_state=3, return_noise=True)
    assert_allclose([len(x) for x in X], lengths)
    # X is the replayed noise everywhere except at the needles
    planted = np.abs(np.concatenate(X) - noise).max(axis=1) > 1e-3
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    assert_allclose(np.flatnonzero(planted), offsets + pos)


@pytest.mark.parametrize("fixture", ["binary", "multiclass"])
def test_top_attention_finds_the_needle(fixture, request):
    X, y, probe = request.getfixturevalue(fixture)
    n_classes = len(np.unique(y))
    pos = needle_positions(N_TEXTS, n_classes=n_classes)
    found = max_activating_examples(probe, X, n_examples=10)
    assert found.n_heads == 2
    for h in range(2):
        entries = found.attention[h]
        assert len(entries) == 10
        hits = np.mean([e.token == pos[e.text] for e in entries])
        assert hits >= 0.8, (h, hits)
        # max_per_text=1: every entry is a different text
        assert len({e.text for e in entries}) == 10
    # the strongest contributions to each class are needles too (in at least
    # one head per class)
    for label in probe.classes_:
        best = max(np.mean([e.token == pos[e.text] for e in found.contributions[h][label]])
                   for h in range(2))
        assert best >= 0.8


@pytest.mark.parametrize("fixture", ["binary", "multiclass"])
def test_contributions_sum_to_decision_function(fixture, request):
    X, y, probe = request.getfixturevalue(fixture)
    contrib = token_contributions(probe, X)
    n_classes = len(probe.classes_)
    bias = probe.module_.bias.detach().double().numpy()
    if n_classes == 2:
        assert contrib[0].shape == (len(X[0]), 2)
        total = np.array([c.sum() for c in contrib]) + bias[0]
    else:
        assert contrib[0].shape == (len(X[0]), 2, n_classes)
        total = np.stack([c.sum(axis=(0, 1)) for c in contrib]) + bias
    assert_allclose(total, probe.decision_function(X), atol=1e-4)


@pytest.mark.parametrize("fixture", ["binary", "multiclass"])
def test_lists_match_brute_force(fixture, request, monkeypatch):
    """Running top-k over many small blocks == sorting every token at once."""
    monkeypatch.setattr(_inspection_scan, "_SCAN_ELEMENTS", 2000)  # ~ a text per block
    X, y, probe = request.getfixturevalue(fixture)
    n = 7
    found = max_activating_examples(probe, X, n_examples=n, max_per_text=None,
                                    context=2)
    weights = probe.attention_weights(X)
    contrib = token_contributions(probe, X)
    binary = len(probe.classes_) == 2
    for h in range(2):
        all_w = np.concatenate([w[:, h] for w in weights])
        entries = found.attention[h]
        assert_allclose([e.value for e in entries], np.sort(all_w)[::-1][:n], rtol=1e-5)
        for e in entries:
            assert_allclose(e.weight, weights[e.text][e.token, h], rtol=1e-5)
            assert e.value == e.weight
        for k, label in enumerate(probe.classes_):
            if binary:
                per_token = np.concatenate([c[:, h] for c in contrib])
                per_token = per_token if k == 1 else -per_token
            else:
                per_token = np.concatenate([c[:, h, k] for c in contrib])
            entries = found.contributions[h][label]
            assert_allclose([e.value for e in entries], np.sort(per_token)[::-1][:n],
                            rtol=1e-9)
            for e in entries:
                c = contrib[e.text][e.token, h]
                assert_allclose(e.contribution, c, rtol=1e-9)
                # the window shows the same signed values
                shown = e.window_values[e.focus]
                assert_allclose(shown, e.value)


def test_windows_and_placeholders(binary):
    X, _, probe = binary
    tokens = _tokens(X)
    found = max_activating_examples(probe, X, tokens, n_examples=5, context=3)
    weights = probe.attention_weights(X)
    for e in found.attention[0] + found.contributions[1][1]:
        T = len(X[e.text])
        lo, hi = max(0, e.token - 3), min(T, e.token + 4)
        assert e.start == lo and e.n_tokens == T
        assert list(e.window_tokens) == tokens[e.text][lo:hi]
        assert e.window_tokens[e.focus] == f"w{e.text}_{e.token}"
    for e in found.attention[1]:
        assert_allclose(e.window_values, weights[e.text][e.start:e.start + len(e.window_tokens), 1],
                        rtol=1e-5)
    plain = max_activating_examples(probe, X, n_examples=2, context=1)
    e = plain.attention[0][0]
    assert e.window_tokens[e.focus] == f"<{e.token}>"


def test_rank_by_score(binary):
    X, _, probe = binary
    found = max_activating_examples(probe, X, n_examples=6, rank_by="score")
    for h in range(2):
        values = [e.value for e in found.attention[h]]
        assert values == sorted(values, reverse=True)
        assert all(e.value == e.score for e in found.attention[h])


def test_ragged_list_and_pipeline_agree(binary, monkeypatch):
    X, y, probe = binary
    ref = max_activating_examples(probe, X, n_examples=5)
    rag = max_activating_examples(probe, RaggedArray.from_list(X), n_examples=5)
    key = [(e.text, e.token) for h in range(2) for e in ref.attention[h]]
    assert key == [(e.text, e.token) for h in range(2) for e in rag.attention[h]]

    pipe = make_pipeline(ActivationScaler(),
                         AttentionProbeClassifier(max_iter=100, random_state=0)).fit(X, y)
    scaled = pipe[0].transform(RaggedArray.from_list(X))
    direct = max_activating_examples(pipe[-1], scaled, n_examples=5)
    monkeypatch.setattr(_inspection_scan, "_PIPELINE_CHUNK", 37)  # several chunks
    through = max_activating_examples(pipe, X, _tokens(X), n_examples=5)
    for a, b in [(direct.attention[0], through.attention[0]),
                 (direct.contributions[0][0], through.contributions[0][0])]:
        assert [(e.text, e.token) for e in a] == [(e.text, e.token) for e in b]
        assert_allclose([e.value for e in a], [e.value for e in b])
    contrib = token_contributions(pipe, X[:5])
    total = np.array([c.sum() for c in contrib]) + pipe[-1].module_.bias.item()
    assert_allclose(total, pipe.decision_function(X[:5]), atol=1e-4)


def test_text_and_html_reports(binary, tmp_path):
    X, _, probe = binary
    tokens = _tokens(X)
    tokens[0] = ["<script>alert(1)</script>"] * len(X[0])
    found = max_activating_examples(probe, X, tokens, n_examples=3, context=2,
                                    max_per_text=None, class_names=["no", "yes"])
    # make sure text 0 is in the report: show every list from text 0 onwards
    assert isinstance(found, MaxActivatingExamples)
    text = found.to_text()
    assert text.startswith("Maximum activating examples: 2 head(s), 200 texts")
    for part in ("Head 0", "Head 1", "Highest attention weight:",
                 "Highest contribution to class no", "Highest contribution to class yes"):
        assert part in text
    first = found.attention[0][0]
    assert f"[[{first.window_tokens[first.focus]}]]" in text
    assert text.count("[[") == 2 * 3 * 3  # heads x lists x entries

    page = found.to_html()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<style>" in page
    for external in ("<script", "<link", "src=", "@import", "url("):
        assert external not in page
    assert page.count('<section id="head-') == 2
    assert page.count("mae-focus") == 2 * 3 * 3 + 1  # + its CSS rule
    assert "rgba(255, 140, 0, 1.000)" in page  # the window maximum is opaque
    assert 'title="token ' in page
    assert found._repr_html_().count("<table>") == 6

    path = found.save_html(tmp_path / "report.html")
    assert path.read_text(encoding="utf-8") == page


def test_tokens_are_html_escaped():
    X, y = make_planted_task("needle", n_texts=40, random_state=1)
    probe = AttentionProbeClassifier(max_iter=50, random_state=0).fit(X, y)
    tokens = [['<script>"&' for _ in x] for x in X]
    found = max_activating_examples(probe, X, tokens, n_examples=2,
                                    class_names=["<b>", "ok"])
    page = found.to_html()
    assert "<script" not in page and "<b>" not in page
    assert "&lt;script&gt;&quot;&amp;" in page
    assert "&lt;b&gt;" in page
    assert '[[<script>"&]]' in found.to_text()


def test_control_characters_are_shown_escaped():
    """Decoded tokens with newlines keep each report entry on one line."""
    X, y = make_planted_task("needle", n_texts=40, random_state=1)
    probe = AttentionProbeClassifier(max_iter=50, random_state=0).fit(X, y)
    tokens = [["a\nb\t" for _ in x] for x in X]
    found = max_activating_examples(probe, X, tokens, n_examples=2, context=1)
    text = found.to_text()
    assert "[[a\\nb\\t]]" in text and "a\nb" not in text
    assert "a\\nb\\t" in found.to_html()


def test_bad_input(binary):
    X, y, probe = binary
    with pytest.raises(NotFittedError, match="AttentionProbeClassifier instance is not fitted"):
        max_activating_examples(AttentionProbeClassifier(), X)
    with pytest.raises(NotFittedError, match="is not fitted yet"):
        token_contributions(make_pipeline(ActivationScaler(), AttentionProbeClassifier()), X)
    mean = MeanProbeClassifier().fit(X, y)
    with pytest.raises(TypeError, match="AttentionProbeClassifier"):
        max_activating_examples(mean, X)
    with pytest.raises(TypeError, match="last step"):
        max_activating_examples(make_pipeline(ActivationScaler(), LogisticRegression()), X)
    with pytest.raises(TypeError, match=r"probe must be a fitted .*; got str"):
        token_contributions("probe", X)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_examples"):
            max_activating_examples(probe, X, n_examples=bad)
    with pytest.raises(ValueError, match="context"):
        max_activating_examples(probe, X, context=-1)
    with pytest.raises(ValueError, match="max_per_text"):
        max_activating_examples(probe, X, max_per_text=0)
    with pytest.raises(ValueError, match="rank_by"):
        max_activating_examples(probe, X, rank_by="logit")
    with pytest.raises(ValueError, match="class_names"):
        max_activating_examples(probe, X, class_names=["a"])
    tokens = _tokens(X)
    with pytest.raises(ValueError, match="199 entries but X has 200 texts"):
        max_activating_examples(probe, X, tokens[:-1])
    tokens[3] = tokens[3][:-1]
    with pytest.raises(ValueError, match=r"text 3 has \d+ token\(s\) in X but tokens\[3\]"):
        max_activating_examples(probe, X, tokens)
    with pytest.raises(TypeError, match=r"tokens must be a list .* not a single string"):
        max_activating_examples(probe, X, "a b c")
    with pytest.raises(ValueError, match="features"):
        max_activating_examples(probe, [x[:, :5] for x in X])


def test_short_texts_and_few_tokens():
    """Texts shorter than the context, fewer tokens than n_examples."""
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((t, 4)).astype(np.float32) for t in (1, 2, 1, 3)]
    y = np.array([0, 1, 0, 1])
    probe = AttentionProbeClassifier(max_iter=20, random_state=0).fit(X, y)
    found = max_activating_examples(probe, X, n_examples=50, max_per_text=None,
                                    context=5)
    assert len(found.attention[0]) == 7  # every token once
    assert {len(e.window_tokens) for e in found.attention[0]} <= {1, 2, 3}
    one = max_activating_examples(probe, X, n_examples=50)
    assert sorted(e.text for e in one.attention[0]) == [0, 1, 2, 3]
    assert "..." not in found.to_text()


def test_inspection_uses_only_public_estimator_api(binary, monkeypatch):
    """Inspection reads ``module_`` and ``best_estimator_``, never the probes'
    private helpers (``_module_placement``, ``_best``)."""
    from sklearn_attnprobe import AttentionProbeClassifierCV
    from sklearn_attnprobe._cv_base import _BaseProbeCV
    from sklearn_attnprobe._base import BaseProbe

    X, y, probe = binary
    expected = max_activating_examples(probe, X, n_examples=5).to_text()
    cv = AttentionProbeClassifierCV(n_heads=2, cv=2, weight_decays=(0.0,), max_iter=20,
                                    random_state=0).fit(X[:60], y[:60])

    def private(*args, **kwargs):
        raise AssertionError("inspection called a private estimator method")

    for cls, name in ((BaseProbe, "_module_placement"), (_BaseProbeCV, "_best")):
        if hasattr(cls, name):
            monkeypatch.setattr(cls, name, private)
    assert max_activating_examples(probe, X, n_examples=5).to_text() == expected
    via_cv = max_activating_examples(cv, X[:60], n_examples=3).to_text()
    monkeypatch.undo()
    assert via_cv == max_activating_examples(cv.best_estimator_, X[:60],
                                             n_examples=3).to_text()
    token_contributions(cv, X[:5])


def test_inspection_of_a_cv_probe_without_refit(binary):
    from sklearn_attnprobe import AttentionProbeClassifierCV

    X, y, _ = binary
    cv = AttentionProbeClassifierCV(cv=2, weight_decays=(0.0,), max_iter=5, refit=False,
                                    random_state=0).fit(X[:40], y[:40])
    with pytest.raises(TypeError, match=r"refit=False: it has no best_estimator_"):
        max_activating_examples(cv, X[:40])
