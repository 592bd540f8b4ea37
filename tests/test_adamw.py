"""The plain loop's AdamW against torch.optim.AdamW, and what it avoids importing."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from sklearn_attnprobe import _fused
from sklearn_attnprobe._adamw import AdamW
from sklearn_attnprobe._training import fused_adamw_supported


def _run(optimizer_cls, dtype, steps=60, lr=0.05, **kwargs):
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(7, 3, generator=gen, dtype=dtype)
    params = [torch.nn.Parameter(torch.randn(7, 3, generator=gen, dtype=dtype)),
              torch.nn.Parameter(torch.randn(3, generator=gen, dtype=dtype)),
              torch.nn.Parameter(torch.zeros(2, dtype=dtype))]  # never gets a gradient
    opt = optimizer_cls(params, lr=lr, **kwargs)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = ((params[0] * params[1] - target) ** 4).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return params, losses, opt


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("fused", [False, None, True])
@pytest.mark.parametrize("numba_update", [True, False])
def test_adamw_matches_torch_adamw(dtype, rtol, fused, numba_update, monkeypatch):
    if fused and not fused_adamw_supported(torch.device("cpu")):
        pytest.skip("this torch has no fused AdamW on CPU")
    if not numba_update:  # the torch-operator update (GPU, or no numba)
        monkeypatch.setattr(_fused, "load_backend", lambda name: None)
    ours, our_losses, opt = _run(AdamW, dtype)
    assert bool(opt._views) == numba_update
    ref, ref_losses, _ = _run(torch.optim.AdamW, dtype, weight_decay=0.0, fused=fused)
    np.testing.assert_allclose(our_losses, ref_losses, rtol=rtol)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=rtol, atol=rtol)
    # the loss did fall: the steps were taken
    assert our_losses[-1] < 0.5 * our_losses[0]
    # torch.optim's state layout, which the stacked loop slices
    state = opt.state[ours[0]]
    assert int(state["step"]) == 60 and state["exp_avg"].shape == ours[0].shape
    assert ours[2] not in opt.state and torch.equal(ours[2], torch.zeros(2, dtype=dtype))


def test_zero_grad_without_set_to_none_zeroes_in_place():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    grad = p.grad
    opt = AdamW([p])
    opt.zero_grad(set_to_none=False)
    assert p.grad is grad and torch.equal(grad, torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None


def test_plain_fits_do_not_import_torch_dynamo():
    # constructing a torch.optim optimizer imports torch._dynamo (over a second
    # on the first fit of a process); the plain loops (AdamW, SciPy's L-BFGS)
    # must not
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from sklearn_attnprobe import (AttentionProbeClassifier, AttentionProbeClassifierCV,
                                       LastTokenProbeClassifier, MeanProbeClassifierCV)
        rng = np.random.default_rng(0)
        X = [rng.standard_normal((int(n), 8)).astype(np.float32)
             for n in rng.integers(2, 9, 60)]
        y = np.arange(60) % 2
        AttentionProbeClassifier(n_heads=2, max_iter=5).fit(X, y).predict(X)
        AttentionProbeClassifierCV(n_heads=2, max_iter=5, cv=2,
                                   weight_decays=[0.0, 0.1]).fit(X, y)
        AttentionProbeClassifier(solver="lbfgs", max_iter=5).fit(X, y)
        LastTokenProbeClassifier().fit(X, y)
        MeanProbeClassifierCV(cv=2).fit(X, y)
        print("torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_a_step_size_per_parameter_matches_torch_param_groups():
    lrs = [0.05, 0.01, 0.02]
    ours, our_losses, opt = _run(AdamW, torch.float64, lr=lrs)
    assert opt.lrs == lrs

    def torch_groups(params, lr):
        return torch.optim.AdamW([{"params": [p], "lr": v} for p, v in zip(params, lr)],
                                 weight_decay=0.0, foreach=False)

    ref, ref_losses, _ = _run(torch_groups, torch.float64, lr=lrs)
    np.testing.assert_allclose(our_losses, ref_losses, rtol=1e-12)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-12)
    # and they differ from one step size for all
    _, one_losses, _ = _run(AdamW, torch.float64, lr=0.05)
    assert not np.allclose(one_losses, our_losses)
    with pytest.raises(ValueError, match="2 step sizes for 3 parameters"):
        AdamW(ours, lr=[0.1, 0.2])
