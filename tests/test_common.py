"""scikit-learn's common estimator checks on every public estimator."""

import copy
import os
import pickle
import warnings

import joblib
import numpy as np
import pytest
import sklearn.utils.estimator_checks as sklearn_checks
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_attnprobe import (
    ActivationScaler,
    AttentionProbeClassifier,
    AttentionProbeClassifierCV,
    LastTokenProbeClassifier,
    LastTokenProbeClassifierCV,
    MeanProbeClassifier,
    MeanProbeClassifierCV,
)

# Checks we expect to fail, per estimator, with the reason. All of them pass
# with scikit-learn 1.9: the 2-D (n_texts, d_model) input form is validated
# with ``validate_data``, the penalty is normalised by the total sample weight
# (so integer weights equal repeated samples) and fits are seeded. The table
# stays here, empty, so that a future exception has to be written down with
# its reason instead of being skipped silently.
EXPECTED_FAILED_CHECKS = {
    "AttentionProbeClassifier": {},
    "MeanProbeClassifier": {},
    "LastTokenProbeClassifier": {},
    "ActivationScaler": {},
    "AttentionProbeClassifierCV": {},
    "MeanProbeClassifierCV": {},
    "LastTokenProbeClassifierCV": {},
    "TransformerActivations": {},
}


def _expected_failed_checks(estimator):
    return EXPECTED_FAILED_CHECKS[type(estimator).__name__]


# -- TransformerActivations on a tiny random model -------------------------------------
def _tiny_transformer_activations():
    """TransformerActivations over a random 2-layer GPT-2 and a word-level
    tokenizer, both built offline (None without the [hf] extra)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        import transformers
        from tokenizers import Tokenizer, models, pre_tokenizers
    except ImportError:
        return None
    from sklearn_attnprobe.activations import TransformerActivations

    words = "[PAD] [UNK] the a cat dog sat ran on mat park good bad".split()
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
                                      unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
        model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(0)
    model = transformers.GPT2Model(transformers.GPT2Config(
        vocab_size=len(words), n_embd=16, n_layer=2, n_head=2, n_positions=32,
        bos_token_id=None, eos_token_id=None))
    return TransformerActivations(model, tokenizer, layer=[1, 2], dtype="float32",
                                  progress=False)


_TRANSFORMER = _tiny_transformer_activations()
_needs_hf = pytest.mark.skipif(_TRANSFORMER is None, reason="needs the [hf] extra")


@parametrize_with_checks(
    [
        AttentionProbeClassifier(),
        AttentionProbeClassifier(n_heads=4, position_bias=False),
        MeanProbeClassifier(),
        LastTokenProbeClassifier(),
        ActivationScaler(),
        # cv=3: the checks' smallest data sets have 3 samples per class
        AttentionProbeClassifierCV(cv=3, max_iter=100, random_state=0),
        MeanProbeClassifierCV(cv=3),
        LastTokenProbeClassifierCV(cv=3),
        *([] if _TRANSFORMER is None else [_TRANSFORMER]),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


# TransformerActivations takes texts (tags: string input, no 2-D arrays), so
# parametrize_with_checks yields only check_estimator_cloneable for it: every
# other common check feeds numeric (n_samples, n_features) arrays. These are
# the common checks that need no data, run on it directly ...
DATA_FREE_CHECKS = [
    "check_no_attributes_set_in_init",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimator_repr",
    "check_parameters_default_constructible",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_valid_tag_types",
    "check_estimator_tags_renamed",
    "check_mixin_order",
    "check_estimators_unfitted",
]


@_needs_hf
@pytest.mark.parametrize("check", DATA_FREE_CHECKS)
def test_transformer_activations_data_free_checks(check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn_checks.SkipTestWarning)
        getattr(sklearn_checks, check)("TransformerActivations", clone(_TRANSFORMER))


# ... and the data checks that matter for a transformer, with texts as the data
# (check_fit_idempotent, check_estimators_overwrite_params, check_dict_unchanged,
# check_estimators_pickle, check_transformer_general's fit_transform == fit +
# transform, check_fit_check_is_fitted).
TEXTS = ["the cat sat on the mat", "a dog ran", "good", "the bad dog sat on a mat",
         "a cat ran in the park", "bad bad bad"]


def _same(a, b):
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))


@_needs_hf
def test_transformer_activations_common_checks_on_texts():
    from sklearn_attnprobe.activations import clear_memory_cache
    from sklearn.utils.validation import check_is_fitted

    for memory_cache in (True, False):
        clear_memory_cache()
        est = clone(_TRANSFORMER).set_params(memory_cache=memory_cache)
        params = joblib.hash({k: v for k, v in est.get_params().items()
                              if k not in ("model", "tokenizer")})
        first = est.fit(TEXTS).transform(TEXTS)
        # fit does not touch the parameters (check_estimators_overwrite_params)
        assert joblib.hash({k: v for k, v in est.get_params().items()
                            if k not in ("model", "tokenizer")}) == params
        assert est.get_params()["model"] is _TRANSFORMER.model
        check_is_fitted(est)  # requires_fit is False, and fit sets layers_
        # transform leaves the estimator as it was (check_dict_unchanged)
        before = {k: copy.copy(v) for k, v in vars(est).items()
                  if k not in ("model", "tokenizer")}
        _same(est.transform(TEXTS), first)
        after = {k: v for k, v in vars(est).items() if k not in ("model", "tokenizer")}
        assert joblib.hash(before) == joblib.hash(after)
        # fitting twice changes nothing (check_fit_idempotent)
        _same(est.fit(TEXTS[::-1]).transform(TEXTS), first)
        # fit_transform == fit + transform (check_transformer_general)
        _same(clone(est).fit_transform(TEXTS), first)
        # a subset's rows are the same rows (check_methods_subset_invariance)
        sub = est.transform(TEXTS[2:4])
        for i in range(2):
            np.testing.assert_array_equal(sub[i], first[2 + i])
        # pickling (check_estimators_pickle)
        loaded = pickle.loads(pickle.dumps(est))
        _same(loaded.transform(TEXTS), first)
        assert first.shape[2] == 2 * 16  # two layers side by side
