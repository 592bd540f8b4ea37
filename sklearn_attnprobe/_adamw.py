"""AdamW for the plain training loop, outside ``torch.optim``.

Why not :class:`torch.optim.AdamW`: constructing any ``torch.optim`` optimizer
imports ``torch._dynamo`` (``Optimizer.add_param_group`` and ``zero_grad``
are wrapped by ``torch._disable_dynamo``), which costs 1.2-1.7 s on the
first fit of every Python process (a CLI run, each joblib worker of a grid
search). Measured on 2 cores, that is more than a whole default fit on
hundreds of texts. A probe has four small parameter tensors, so a plain
update costs about as much as torch's fused one.

The update is torch's AdamW with ``weight_decay=0`` (the probes put their
penalty in the objective): with ``g`` the gradient at step ``t``,

    m <- beta1 m + (1 - beta1) g,      v <- beta2 v + (1 - beta2) g^2,
    p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).

The skorch path (user callbacks) keeps :class:`torch.optim.AdamW`, which
skorch's schedules expect; both paths agree to rounding.

``state`` and ``param_groups[0]["params"]`` follow ``torch.optim``'s layout,
so the stacked loop can slice finished models out of both.
"""

import math
from collections import defaultdict

import torch


class AdamW:
    """Adam with decoupled (here: no) weight decay over ``params``.

    ``lr`` is one step size, or a sequence of them, one per parameter in the
    order of ``params`` (kept when the stacked loop slices the parameters).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        params = list(params)
        lrs = [lr] * len(params) if isinstance(lr, (int, float)) else list(lr)
        if len(lrs) != len(params):
            raise ValueError(f"{len(lrs)} step sizes for {len(params)} parameters")
        self.lrs, self.betas, self.eps = [float(v) for v in lrs], betas, float(eps)
        self.param_groups = [{"params": params}]
        self.state = defaultdict(dict)
        self._views = {}  # parameter -> numpy views for the CPU kernel

    def zero_grad(self, set_to_none=True):
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self):
        beta1, beta2 = self.betas
        for p, lr in zip(self.param_groups[0]["params"], self.lrs):
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            views = self._cpu_views(p, state)
            if views is not None:
                step_count, p_flat, m_flat, v_flat, kernel = views
                step_count += 1
                t = int(step_count)
                dtype = p_flat.dtype.type
                kernel(p_flat, p.grad.detach().numpy().reshape(-1), m_flat, v_flat,
                       dtype(1 - beta1), dtype(beta2), dtype(1 - beta2),
                       dtype(math.sqrt(1 - beta2**t)), dtype(self.eps),
                       dtype(-lr / (1 - beta1**t)))
                continue
            state["step"] += 1
            t = int(state["step"])
            grad, m, v = p.grad, state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(self.eps)
            p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))

    def _cpu_views(self, p, state):
        """``(step, p, exp_avg, exp_avg_sq, kernel)`` as numpy views for the
        numba update, or None (not a contiguous CPU float32/float64 tensor
        with a contiguous gradient, or no numba). Kept per parameter while
        its state tensors stay the same objects (the stacked loop replaces
        them when models finish)."""
        cache = self._views
        hit = cache.get(p)
        if hit is not None and hit[0] is state["exp_avg"] and p.grad.is_contiguous():
            return hit[1]
        if (p.device.type != "cpu" or p.dtype not in (torch.float32, torch.float64)
                or not p.is_contiguous() or not p.grad.is_contiguous()
                or p.grad.dtype != p.dtype):
            return None
        from ._fused import load_backend

        backend = load_backend("numba")
        if backend is None:
            return None
        # numpy views share the tensors' memory: the kernel path updates the
        # state (step count included) in place without a torch call
        views = (state["step"].numpy(), *(t.detach().numpy().reshape(-1)
                                 for t in (p, state["exp_avg"], state["exp_avg_sq"])),
                 backend.adamw_update)
        cache[p] = (state["exp_avg"], views)
        return views
