"""Persistence: pickles with one owner of the parameters that load on any host,
and pickle-free safetensors files (``save``/``load``)."""

import json
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from skorch.callbacks import EpochTimer

import sklearn_attnprobe._persistence as persistence
from sklearn_attnprobe import (
    AttentionProbeClassifier,
    AttentionProbeClassifierCV,
    LastTokenProbeClassifier,
    LastTokenProbeClassifierCV,
    MeanProbeClassifier,
    MeanProbeClassifierCV,
)
from sklearn_attnprobe.datasets import make_planted_task

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def task():
    X, y = make_planted_task("needle", n_texts=80, d_model=8, random_state=0)
    return X, np.array(["no", "yes"])[y]


def _probes():
    return [
        AttentionProbeClassifier(n_heads=2, max_iter=30, random_state=0),
        AttentionProbeClassifier(n_heads=1, position=None, solver="lbfgs", max_iter=20,
                                 random_state=0),
        MeanProbeClassifier(weight_decay=1e-2),
        LastTokenProbeClassifier(weight_decay=1e-2),
        AttentionProbeClassifierCV(n_heads=1, cv=2, weight_decays=(0.0, 0.1), max_iter=20,
                                   random_state=0),
        AttentionProbeClassifierCV(n_heads=[1, 2], cv=2, weight_decays=(0.0, 0.1),
                                   max_iter=20, random_state=0),
        MeanProbeClassifierCV(cv=2, weight_decays=(1e-3, 1e-1)),
        LastTokenProbeClassifierCV(cv=2, weight_decays=(1e-3, 1e-1)),
    ]


def _ids():
    return [type(p).__name__ + str(i) for i, p in enumerate(_probes())]


def _outputs(est, X):
    return est.predict(X), est.predict_proba(X), est.decision_function(X)


def _assert_same_outputs(a, b, X):
    pa, qa, da = _outputs(a, X)
    pb, qb, db = _outputs(b, X)
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(qa, qb)
    np.testing.assert_array_equal(da, db)


@pytest.mark.parametrize("est", _probes(), ids=_ids())
def test_pickle_round_trip_predicts_identically(est, task):
    X, y = task
    est.fit(X, y)
    loaded = pickle.loads(pickle.dumps(est))
    _assert_same_outputs(est, loaded, X)
    np.testing.assert_array_equal(loaded.classes_, est.classes_)


@pytest.mark.parametrize("est", [
    AttentionProbeClassifier(max_iter=5, random_state=0, callbacks=[EpochTimer()]),
    MeanProbeClassifier(max_iter=5, callbacks=[EpochTimer()]),
], ids=["attention", "mean"])
def test_one_owner_of_the_parameters_after_unpickling(est, task):
    X, y = task
    est.fit(X, y)
    loaded = pickle.loads(pickle.dumps(est))
    net = getattr(loaded, "net_", None)
    if net is not None:
        # skorch pickles its module apart from the estimator's: one object again
        assert net.module_ is loaded.module_
        assert net.module is loaded.module_
        if getattr(net, "optimizer_", None) is not None:
            params = {id(p) for g in net.optimizer_.param_groups for p in g["params"]}
            assert params == {id(p) for p in loaded.module_.parameters()}
        assert len(net.history) == len(est.net_.history)
    # the fitted parameters are pickled once
    blob = pickle.dumps(est)
    first = next(iter(est.module_.state_dict().values())).numpy().tobytes()
    assert blob.count(first) == 1
    # and the original estimator is untouched by pickling
    assert est.net_.module_ is est.module_
    _assert_same_outputs(est, loaded, X)


def test_unpickled_net_keeps_training(task):
    X, y = task
    est = AttentionProbeClassifier(max_iter=5, random_state=0, callbacks=[EpochTimer()])
    loaded = pickle.loads(pickle.dumps(est.fit(X, y)))
    loaded.set_params(warm_start=True).fit(X, y)
    assert loaded.net_.module_ is loaded.module_


def _simulate_cuda_state(est):
    """What ``__getstate__`` writes for a probe fitted on CUDA: the modules on
    the CPU and the device they came from."""
    state = est.__getstate__()
    assert "_attnprobe_saved_devices" not in state  # fitted on the CPU
    state["_attnprobe_saved_devices"] = {"module_": "cuda:0"}
    return state


def test_cuda_fitted_state_loads_on_a_cpu_host(task, monkeypatch):
    X, y = task
    est = AttentionProbeClassifier(n_heads=2, max_iter=20, random_state=0).fit(X, y)
    state = _simulate_cuda_state(est)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = AttentionProbeClassifier.__new__(AttentionProbeClassifier)
    with pytest.warns(UserWarning, match=r"fitted on cuda:0.*loaded on the CPU"):
        loaded.__setstate__(state)
    assert loaded.module_.bias.device.type == "cpu"
    _assert_same_outputs(est, loaded, X)


def test_getstate_moves_modules_to_cpu_without_touching_the_probe(task, monkeypatch):
    """A module on another device is pickled as a CPU copy, with its device noted."""
    X, y = task
    est = MeanProbeClassifier().fit(X, y)
    # make the module look like it lives elsewhere: a copy is made, the live one kept
    monkeypatch.setattr(persistence, "_is_cpu", lambda obj: False)
    monkeypatch.setattr(persistence, "_device_of", lambda obj: torch.device("cuda", 1))
    state = est.__getstate__()
    assert state["_attnprobe_saved_devices"] == {"module_": "cuda:1"}
    assert state["module_"] is not est.module_
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = MeanProbeClassifier.__new__(MeanProbeClassifier)
    with pytest.warns(UserWarning, match="cuda:1"):
        loaded.__setstate__(state)
    _assert_same_outputs(est, loaded, X)


@pytest.mark.cuda
def test_cuda_fitted_probe_unpickles_on_a_cpu_only_process(task, tmp_path):
    X, y = task
    est = AttentionProbeClassifier(n_heads=2, max_iter=20, random_state=0,
                                   device="cuda").fit(X, y)
    path = tmp_path / "probe.pkl"
    path.write_bytes(pickle.dumps(est))
    np.save(tmp_path / "proba.npy", est.predict_proba(X))
    with open(tmp_path / "X.pkl", "wb") as f:
        pickle.dump(list(X), f)
    code = (
        "import pickle, warnings, numpy as np, torch\n"
        "assert not torch.cuda.is_available()\n"
        f"X = pickle.load(open({str(tmp_path / 'X.pkl')!r}, 'rb'))\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        f"    est = pickle.load(open({str(path)!r}, 'rb'))\n"
        "assert any('loaded on the CPU' in str(x.message) for x in w)\n"
        "assert est.module_.bias.device.type == 'cpu'\n"
        f"np.testing.assert_allclose(est.predict_proba(X), np.load({str(tmp_path / 'proba.npy')!r}),"
        " rtol=1e-5, atol=1e-6)\n"
    )
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    # and on this host it goes back to the GPU
    loaded = pickle.loads(path.read_bytes())
    assert loaded.module_.bias.device.type == "cuda"


# -- save / load ---------------------------------------------------------------------
@pytest.mark.parametrize("est", _probes(), ids=_ids())
def test_save_load_round_trip(est, task, tmp_path):
    X, y = task
    est.fit(X, y)
    path = est.save(tmp_path / "probe.safetensors")
    loaded = type(est).load(path)
    assert type(loaded) is type(est)
    assert loaded.get_params() == est.get_params()
    np.testing.assert_array_equal(loaded.classes_, est.classes_)
    assert loaded.classes_.dtype == est.classes_.dtype
    assert loaded.n_features_in_ == est.n_features_in_
    _assert_same_outputs(est, loaded, X)
    if hasattr(est, "cv_results_"):
        assert loaded.best_params_ == est.best_params_
        np.testing.assert_array_equal(loaded.cv_results_["mean_test_score"],
                                      est.cv_results_["mean_test_score"])
    else:
        assert loaded.compute_dtype_ == est.compute_dtype_
        for (k, a), (k2, b) in zip(est.module_.state_dict().items(),
                                   loaded.module_.state_dict().items()):
            assert k == k2 and a.dtype == b.dtype
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_saved_file_is_safetensors_and_json(task, tmp_path):
    from safetensors import safe_open

    X, y = task
    est = AttentionProbeClassifier(n_heads=2, max_iter=10, random_state=0,
                                   callbacks=[EpochTimer()]).fit(X, y)
    path = est.save(tmp_path / "probe.safetensors")
    with open(path, "rb") as f:
        assert b"pickle" not in f.read().lower()
    with safe_open(path, framework="pt") as f:
        meta = json.loads(f.metadata()["sklearn_attnprobe"])
        assert sorted(f.keys()) == ["module_.bias", "module_.query", "module_.slope",
                                    "module_.value"]
    desc = meta["estimator"]
    assert desc["class"] == "AttentionProbeClassifier"
    assert desc["params"]["n_heads"] == 2
    assert "callbacks" in desc["dropped"]  # not plain data: back as the default
    assert desc["modules"]["module_"]["config"]["n_heads"] == 2
    loaded = AttentionProbeClassifier.load(path)
    assert loaded.callbacks is None and not hasattr(loaded, "net_")
    _assert_same_outputs(est, loaded, X)


def test_feature_names_and_labels_survive(tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(60, 4)), columns=list("abcd"))
    y = np.array([3, 7, 9])[rng.integers(0, 3, size=60)]
    est = MeanProbeClassifier(class_weight={3: 1.0, 7: 2.0, 9: 1.0}).fit(X, y)
    loaded = MeanProbeClassifier.load(est.save(tmp_path / "p.safetensors"))
    np.testing.assert_array_equal(loaded.feature_names_in_, est.feature_names_in_)
    assert loaded.class_weight == est.class_weight
    assert loaded.classes_.dtype == est.classes_.dtype
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))


def test_load_checks_the_class_and_the_file(task, tmp_path):
    from safetensors.torch import save_file

    X, y = task
    path = MeanProbeClassifier().fit(X, y).save(tmp_path / "p.safetensors")
    with pytest.raises(TypeError, match="holds a MeanProbeClassifier, not a"):
        AttentionProbeClassifier.load(path)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="no sklearn_attnprobe metadata"):
        MeanProbeClassifier.load(other)


def test_load_on_a_host_without_the_saved_device(task, tmp_path, monkeypatch):
    X, y = task
    est = MeanProbeClassifier().fit(X, y)
    path = est.save(tmp_path / "p.safetensors")
    monkeypatch.setattr(persistence, "_device_of", lambda obj: torch.device("cuda", 0))
    cuda_path = est.save(tmp_path / "cuda.safetensors")
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="loaded on the CPU"):
        loaded = MeanProbeClassifier.load(cuda_path)
    _assert_same_outputs(est, loaded, X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MeanProbeClassifier.load(cuda_path, device="cpu")
        MeanProbeClassifier.load(path)


def test_save_needs_safetensors(task, tmp_path, monkeypatch):
    X, y = task
    est = MeanProbeClassifier().fit(X, y)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"sklearn-attnprobe\[persist\]"):
        est.save(tmp_path / "p.safetensors")
