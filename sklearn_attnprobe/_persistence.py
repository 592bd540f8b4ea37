"""Saving fitted probes: pickles that load anywhere, and pickle-free files.

Two ways to keep a fitted probe, both provided by
:class:`ProbePersistenceMixin`:

* ``pickle`` / ``joblib.dump``: the fitted torch modules travel on the CPU
  and go back to the device they were fitted on when the unpickling host has
  it (the CPU otherwise, with a warning), so a probe fitted on a GPU loads on
  a laptop. ``module_`` is the one owner of the fitted parameters: a skorch
  ``net_`` that trained it is pickled without its own reference to the module
  (and without its optimizer, which holds the parameters too) and gets
  ``module_`` back on load.
* ``probe.save(path)`` / ``Probe.load(path)``: one safetensors file holding
  the parameters as tensors and everything else (class, parameters, classes,
  fitted attributes) as JSON in the file's header. Loading runs no pickle, so
  a probe downloaded from someone else cannot run code.
"""

import copy
import json
import warnings

import numpy as np
import torch
from torch import nn

FORMAT = "sklearn_attnprobe.probe"
FORMAT_VERSION = 1
_META_KEY = "sklearn_attnprobe"
_DEVICES_KEY = "_attnprobe_saved_devices"
_NET_KEY = "_attnprobe_net_state"


# -- pickling ---------------------------------------------------------------------
def _is_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.device.type == "cpu"
    return all(t.device.type == "cpu" for t in list(obj.parameters()) + list(obj.buffers()))


def _device_of(obj):
    if isinstance(obj, torch.Tensor):
        return obj.device
    for t in list(obj.parameters()) + list(obj.buffers()):
        return t.device
    return torch.device("cpu")


def _cpu_copy(obj):
    """A CPU copy of a tensor or module (the original is left where it is)."""
    if _is_cpu(obj):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    return copy.deepcopy(obj).cpu()


def _available(device):
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        index = 0 if device.index is None else device.index
        return torch.cuda.is_available() and index < torch.cuda.device_count()
    if device.type == "mps":
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return False


def _restore_device(obj, device, owner, name):
    """Move ``obj`` (a CPU module or tensor) back to ``device`` if this host has it."""
    if _available(device):
        return obj.to(device)
    warnings.warn(
        f"{owner}.{name} was fitted on {device}, which this host does not have; "
        "it is loaded on the CPU and predicts there. Set device='cpu' (or "
        "'auto') before fitting it again.",
        UserWarning, stacklevel=4,
    )
    return obj


def _net_state(net, owner_module):
    """The skorch ``net_`` to pickle: no second copy of the fitted parameters.

    skorch pickles its ``module_`` apart from the estimator's (so after
    unpickling they would be two objects) and its ``module`` init argument,
    the same object, a third time; the optimizer references the parameters
    as well. The copy pickled here drops the module references that
    duplicate ``owner_module`` (they are rebound to it on load) and the
    optimizer (re-created, with fresh state, on load), and holds any other
    module on the CPU.
    """
    if not hasattr(net, "__dict__") or "module_" not in vars(net):
        return net, None
    stripped = object.__new__(type(net))
    stripped.__dict__.update(vars(net))
    d = stripped.__dict__
    record = {"owner": False, "module_device": None, "optimizer": False}
    module_ = d.get("module_")
    if owner_module is not None and module_ is owner_module:
        record["owner"] = True
        d["module_"] = None
    elif isinstance(module_, nn.Module):
        record["module_device"] = str(_device_of(module_))
        d["module_"] = _cpu_copy(module_)
    if isinstance(d.get("module"), nn.Module) and d.get("module") is module_:
        d["module"] = None  # the init argument, the same object again
    if "optimizer_" in d:
        record["optimizer"] = d.pop("optimizer_") is not None
    d["device"] = "cpu" if record["owner"] or record["module_device"] else d.get("device")
    return stripped, record


def _net_restore(net, record, owner_module, owner_name):
    if record["owner"]:
        net.module_ = owner_module
    elif record["module_device"] is not None:
        net.module_ = _restore_device(net.module_, record["module_device"], owner_name,
                                      "net_.module_")
    if getattr(net, "module", None) is None:
        net.module = net.module_
    device = _device_of(net.module_) if isinstance(net.module_, nn.Module) else None
    if device is not None:
        net.device = str(device)
    if record["optimizer"]:
        try:
            net.initialize_optimizer()
        except Exception:  # noqa: BLE001 -- history and callbacks stay usable
            net.optimizer_ = None
    return net


class ProbePersistenceMixin:
    """Pickling on the CPU with one owner of the parameters; safetensors files.

    Mixed into the probes and the cross-validated probes (before
    :class:`~sklearn.base.BaseEstimator` in the bases).
    """

    def __getstate__(self):
        state = super().__getstate__()
        if state is self.__dict__:
            state = dict(state)
        devices = {}
        for name, value in list(state.items()):
            if isinstance(value, (nn.Module, torch.Tensor)) and not _is_cpu(value):
                devices[name] = str(_device_of(value))
                state[name] = _cpu_copy(value)
        net = state.get("net_")
        if net is not None:
            stripped, record = _net_state(net, self.__dict__.get("module_"))
            if record is not None:
                state["net_"] = stripped
                state[_NET_KEY] = record
        if devices:
            state[_DEVICES_KEY] = devices
        return state

    def __setstate__(self, state):
        state = dict(state)
        devices = state.pop(_DEVICES_KEY, {})
        net_record = state.pop(_NET_KEY, None)
        super().__setstate__(state)
        owner = type(self).__name__
        for name, device in devices.items():
            value = self.__dict__.get(name)
            if value is not None:
                self.__dict__[name] = _restore_device(value, device, owner, name)
        net = self.__dict__.get("net_")
        if net is not None and net_record is not None:
            self.__dict__["net_"] = _net_restore(net, net_record,
                                                 self.__dict__.get("module_"), owner)

    # -- pickle-free files ----------------------------------------------------------
    def save(self, path):
        """Write the fitted probe to one safetensors file (no pickle).

        The parameters are stored as tensors, everything else (class name,
        JSON-serialisable ``get_params()``, ``classes_`` with their dtype,
        ``n_features_in_``, ``feature_names_in_``, the compute dtype, the
        module's constructor arguments, the other fitted attributes) as JSON
        in the file's metadata. Not saved: parameters that are not plain
        data (``callbacks``, a ``RandomState``, a splitter or a callable
        scorer are listed in the metadata and come back as their defaults)
        and the skorch ``net_``.

        Parameters
        ----------
        path : str or path-like
            File to write (conventionally ``*.safetensors``).

        Returns
        -------
        path : str
        """
        save_file, _ = _safetensors()
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        tensors = {}
        meta = _describe(self, "", tensors)
        header = {"format": FORMAT, "format_version": FORMAT_VERSION,
                  "library_version": _library_version(), "estimator": meta}
        save_file(tensors, str(path), metadata={_META_KEY: json.dumps(header)})
        return str(path)

    @classmethod
    def load(cls, path, device=None):
        """Read a probe written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
        device : str, torch.device or None, default=None
            Where the parameters go. None: the device they were saved from
            when this host has it, else the CPU (with a warning).

        Returns
        -------
        estimator : the saved probe, fitted
        """
        _, safe_open = _safetensors()
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
            if raw is None:
                raise ValueError(f"{path} is not a file written by {cls.__name__}.save "
                                 "(no sklearn_attnprobe metadata)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = json.loads(raw)
        if header.get("format") != FORMAT or header.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format {header.get('format')!r} "
                             f"version {header.get('format_version')!r}")
        est = _rebuild(header["estimator"], "", tensors, device)
        if not isinstance(est, cls):
            raise TypeError(f"{path} holds a {type(est).__name__}, not a {cls.__name__}")
        return est


# -- the file format ----------------------------------------------------------------
def _safetensors():
    try:
        from safetensors.torch import save_file
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "saving and loading probes needs the safetensors package: "
            "pip install 'sklearn-attnprobe[persist]' (or pip install safetensors)"
        ) from None
    return save_file, safe_open


def _library_version():
    from . import __version__

    return __version__


def _estimator_classes():
    import sklearn_attnprobe as pkg

    return {name: getattr(pkg, name) for name in pkg.__all__
            if isinstance(getattr(pkg, name), type)
            and issubclass(getattr(pkg, name), ProbePersistenceMixin)}


def _module_classes():
    from ._modules import AttentionProbeModule, LinearProbeModule

    return {"AttentionProbeModule": AttentionProbeModule,
            "LinearProbeModule": LinearProbeModule}


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def _module_config(module):
    """Constructor arguments of a probe module (its shapes and options)."""
    name = type(module).__name__
    if name == "AttentionProbeModule":
        return {"d_model": int(module.value.shape[1]), "n_heads": int(module.value.shape[0]),
                "n_outputs": int(module.value.shape[2]),
                "position": getattr(module, "position", "last")}
    if name == "LinearProbeModule":
        return {"d_model": int(module.weight.shape[0]),
                "n_outputs": int(module.weight.shape[1])}
    raise TypeError(f"cannot save a module of type {name}")


class _Unencodable(Exception):
    pass


def _encode(value):
    """Plain data -> JSON, with tags for what JSON lacks (tuples, arrays, dtypes)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, torch.dtype):
        return {"__torch_dtype__": _dtype_name(value)}
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, np.ma.MaskedArray):
        return {"__masked__": _encode(np.asarray(value.data)),
                "mask": np.ma.getmaskarray(value).tolist()}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufUS" and value.dtype != object:
            raise _Unencodable(type(value).__name__)
        items = value.tolist()
        _encode(items)  # object arrays: only of plain data
        return {"__ndarray__": items, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            if any(k.startswith("__") for k in value):
                return {"__items__": [[k, _encode(v)] for k, v in value.items()]}
            return {k: _encode(v) for k, v in value.items()}
        return {"__items__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    raise _Unencodable(type(value).__name__)


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__torch_dtype__" in value:
        return getattr(torch, value["__torch_dtype__"])
    if "__masked__" in value:
        return np.ma.MaskedArray(_decode(value["__masked__"]), mask=value["mask"])
    if "__ndarray__" in value:
        dtype = np.dtype(value["dtype"])
        if dtype == object:
            out = np.empty(len(value["__ndarray__"]), dtype=object)
            out[:] = value["__ndarray__"]
            return out.reshape(value["shape"])
        return np.array(value["__ndarray__"], dtype=dtype).reshape(value["shape"])
    if "__tuple__" in value:
        return tuple(_decode(v) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k) if not isinstance(k, list) else tuple(k): _decode(v)
                for k, v in value["__items__"]}
    return {k: _decode(v) for k, v in value.items()}


_NOT_SAVED = ("net_",)


def _describe(est, prefix, tensors):
    """JSON description of ``est``; its parameters go into ``tensors``."""
    params, dropped = {}, []
    for name, value in est.get_params(deep=False).items():
        try:
            params[name] = _encode(value)
        except _Unencodable:
            dropped.append(name)
    attributes, modules, nested = {}, {}, {}
    for name, value in vars(est).items():
        if not name.endswith("_") or name.startswith("_") or name in _NOT_SAVED:
            continue
        if isinstance(value, nn.Module):
            config = _module_config(value)
            state = value.state_dict()
            dtype = next(iter(state.values())).dtype
            for key, tensor in state.items():
                tensors[f"{prefix}{name}.{key}"] = tensor.detach().cpu().contiguous()
            modules[name] = {"class": type(value).__name__, "config": config,
                             "dtype": _dtype_name(dtype), "device": str(_device_of(value))}
        elif isinstance(value, ProbePersistenceMixin):
            nested[name] = _describe(value, f"{prefix}{name}.", tensors)
        else:
            try:
                attributes[name] = _encode(value)
            except _Unencodable:
                dropped.append(name)
    return {"class": type(est).__name__, "params": params, "dropped": dropped,
            "attributes": attributes, "modules": modules, "nested": nested}


def _rebuild(meta, prefix, tensors, device):
    classes = _estimator_classes()
    name = meta["class"]
    if name not in classes:
        raise ValueError(f"unknown estimator class {name!r} in the file")
    est = classes[name](**{k: _decode(v) for k, v in meta["params"].items()})
    for attr, value in meta["attributes"].items():
        setattr(est, attr, _decode(value))
    module_classes = _module_classes()
    for attr, spec in meta["modules"].items():
        if spec["class"] not in module_classes:
            raise ValueError(f"unknown module class {spec['class']!r} in the file")
        module = module_classes[spec["class"]](**spec["config"],
                                               dtype=getattr(torch, spec["dtype"]))
        start = f"{prefix}{attr}."
        state = {k[len(start):]: v for k, v in tensors.items()
                 if k.startswith(start) and "." not in k[len(start):]}
        module.load_state_dict(state, strict=True)
        if device is not None:
            module = module.to(device)
        else:
            module = _restore_device(module, spec["device"], name, attr)
        setattr(est, attr, module)
    for attr, sub in meta["nested"].items():
        setattr(est, attr, _rebuild(sub, f"{prefix}{attr}.", tensors, device))
    return est
