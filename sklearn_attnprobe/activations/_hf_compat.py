"""Everything that depends on the transformers version, in one place.

The extraction reads hidden states through public torch mechanisms only:
forward pre-hooks, registered with ``register_forward_pre_hook`` and removed
through their handles after every batch, on the model's stack of blocks
(:func:`find_layer_stack`); hidden state ``k`` is the input of block ``k``
(``0`` = the embeddings' output) and the last one is the model's
``last_hidden_state`` (after the final norm where the architecture has
one), which is what ``output_hidden_states=True`` returns in transformers 4
and 5. The model is never called with ``output_hidden_states``, so
transformers >= 5 installs none of its own output-capturing hooks, and the
model stays picklable with nothing to undo.

Only a model without a recognisable block stack falls back to
``output_hidden_states=True`` (:func:`hidden_states_request`), and on
transformers >= 5 that path needs two workarounds, both gated on the
version and on the feature being there:

* :func:`ensure_capture_registry`: transformers 5 looks up what to record in a
  process-wide registry that a model class fills in its ``__init__``; a model
  unpickled in another process (a joblib worker) never ran it there and
  silently returns no hidden states.
* :func:`remove_capture_hooks`: the hooks transformers 5 installs are local
  closures, so a model that ran once cannot be pickled until they are gone.
"""

import re

import torch

_BLOCK_NAMES = ("layers", "layer", "h", "blocks", "block")


def transformers_version():
    """``(major, minor)`` of the installed transformers, or None."""
    try:
        import transformers
    except ImportError:
        return None
    m = re.match(r"(\d+)\.(\d+)", transformers.__version__)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _has_output_capturing():
    """transformers >= 5 records outputs with hooks (utils.output_capturing)."""
    v = transformers_version()
    if v is None or v < (5, 0):
        return False
    try:
        from transformers.utils import output_capturing  # noqa: F401
    except ImportError:
        return False
    return True


def find_layer_stack(net, n_layers):
    """The ``nn.ModuleList`` of ``net``'s ``n_layers`` blocks, or None.

    Preferred: a list named like the blocks of transformers' architectures
    (``layers``, ``layer``, ``h``, ``blocks``, ``block``); its entries must
    share one class.
    """
    if not n_layers:
        return None
    found = []
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers \
                and len({type(b) for b in m}) == 1:
            found.append((name.rsplit(".", 1)[-1] not in _BLOCK_NAMES, name.count("."), m))
    if not found:
        return None
    found.sort(key=lambda t: t[:2])
    return found[0][2]


class BlockInputs:
    """Record the hidden-state input of chosen blocks during one forward pass.

    ``with BlockInputs(stack, indices) as rec: net(...)``; then
    ``rec.states[k]`` is the input of block ``k``. The hooks are removed on
    exit through their handles.
    """

    def __init__(self, stack, indices):
        self.stack, self.indices = stack, sorted(set(indices))
        self.states, self._handles = {}, []

    def _hook(self, k):
        def record(module, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            if isinstance(h, (tuple, list)):
                h = h[0]
            self.states[k] = h
        return record

    def __enter__(self):
        for k in self.indices:
            self._handles.append(
                self.stack[k].register_forward_pre_hook(self._hook(k), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return False


# -- the output_hidden_states fallback ------------------------------------------------
def hidden_states_request(layers):
    """``output_hidden_states`` for the fallback: True, or on transformers >= 5
    (which keeps only the listed states) the sorted indices."""
    if not _has_output_capturing():
        return True
    from transformers.utils.output_capturing import selected_hidden_states

    if selected_hidden_states([0]) == [0] and all(k >= 0 for k in layers):
        return sorted(set(layers))
    return True


def ensure_capture_registry(model):
    """transformers >= 5: re-register the output-recording specs of ``model``'s
    classes in this process (see the module docstring). No-op before 5."""
    if not _has_output_capturing():
        return
    from transformers.utils import output_capturing

    registry = getattr(output_capturing, "_CAN_RECORD_REGISTRY", None)
    if registry is None:
        return
    for m in model.modules():
        spec = getattr(m, "_can_record_outputs", None)
        # keyed by str(class) (a plain dict in 5.17, a dict subclass whose
        # __setitem__ takes the model in 5.24): go through dict
        key = str(type(m))
        if spec and not dict.get(registry, key):
            dict.__setitem__(registry, key, spec)


def remove_capture_hooks(model):
    """transformers >= 5: remove the output-capturing hooks it installed (see
    the module docstring) and their "installed" flag, leaving the model as
    before its first forward pass. Returns whether anything was removed."""
    if not _has_output_capturing():
        return False
    changed = False
    for m in model.modules():
        hooks = getattr(m, "_forward_hooks", {})
        for hid, fn in list(hooks.items()):
            if getattr(fn, "__name__", "") == "output_capturing_hook":
                del hooks[hid]
                changed = True
        if getattr(m, "_output_capturing_hooks_installed", False):
            m._output_capturing_hooks_installed = False
            changed = True
    return changed
