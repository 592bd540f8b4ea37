"""Fingerprints and the sharded on-disk activation cache.

Layout of one cached extraction, a folder ``<cache_dir>/activations-<key>/``
where ``key`` hashes everything that determines the result (model config and
a weight fingerprint, tokenizer, layers, options, the texts)::

    meta.json                        what this folder holds, see below
    shard-00000.lengths.npy          kept tokens per text of shard 0 (int64)
    shard-00000.layer-0003.npy       (n_tokens_of_shard, d_model) of layer 3
    ...                              (deleted once merged)
    layer-0003.npy                   merged buffer of layer 3, all texts
    offsets.npy                      (n_texts + 1,) offsets into the buffers

``meta.json`` repeats the key's ingredients (a folder is reused only when they
match exactly, so a changed option or text list never mixes with old shards)
and lists the *complete* shards (plus the shard size, which a resumed run
keeps, so it is not part of the key). A shard is computed straight into
memory-mapped ``.npy`` files under temporary names, flushed, renamed into
place with :func:`os.replace` (atomic), and only then added to
``meta.json`` (itself rewritten through a temporary file and
:func:`os.replace`). A file under its final name is therefore always whole,
and a shard is read back only when ``meta.json`` lists it: a run killed at any
point resumes by recomputing the shards that are not listed; temporary files
left by a dead process (its pid is in their names) are deleted on the next
run. One extraction should write to a given folder at a time: two concurrent
writers duplicate work, and one may merge while the other still reads shards.

Why merge at the end instead of reading shards lazily: a
:class:`~sklearn_attnprobe.RaggedArray` is one contiguous ``(n_tokens,
d_model)`` buffer plus offsets, and the probes, :class:`ActivationScaler`,
cross-validation splits (zero-copy ``starts``/``lengths`` selections) and
joblib's memory-mapping of workers' inputs all rely on that single buffer. A
lazy view over many shard files would need a second container type that every
estimator understands. The merge is one sequential copy per layer (disk
bandwidth, far cheaper than the model forward passes that produced the data);
each layer's shards are deleted right after its merged file is in place, so
the disk never holds more than one layer twice.
"""

import hashlib
import json
import os
import re
import uuid

import numpy as np

from .._ragged import RaggedArray

FORMAT_VERSION = 1
_TMP_RE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]+\.tmp$")


# -- fingerprints -----------------------------------------------------------
def text_digests(texts):
    """One 16-byte BLAKE2b digest per text (UTF-8)."""
    return [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest()
            for t in texts]


def texts_hash(digests):
    """Hash of a text list in order, from :func:`text_digests`."""
    h = hashlib.sha256(len(digests).to_bytes(8, "little"))
    for d in digests:
        h.update(d)
    return h.hexdigest()


def _sha256(obj):
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, default=str).encode("utf-8")
    ).hexdigest()


_SAMPLE = 1024  # strided values hashed per tensor
_CHUNK = 1 << 20  # elements per reduction step (bounded temporary memory)


def _tensor_digest(t):
    """Bytes that change with any value of ``t``: a strided sample of up to
    1,024 values (exact bytes) and float64 sums of all values, of their
    squares and of their position-weighted values, reduced on the tensor's
    device chunk by chunk (no host copy of the tensor)."""
    import torch

    flat = t.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        return b""
    if not (flat.dtype.is_floating_point or flat.dtype.is_complex):
        flat = flat.to(torch.float64) if flat.dtype != torch.bool else flat.to(torch.uint8)
    if flat.dtype.is_complex:
        flat = torch.view_as_real(flat).reshape(-1)
        n = flat.numel()
    step = max(1, n // _SAMPLE)
    sample = flat[::step][:_SAMPLE].to(torch.float64)
    sums = torch.zeros(3, dtype=torch.float64, device=flat.device)
    for start in range(0, n, _CHUNK):
        chunk = flat[start:start + _CHUNK].to(torch.float64)
        weights = torch.arange(start, start + chunk.numel(), device=chunk.device,
                               dtype=torch.float64).remainder_(8191).add_(1.0)
        sums += torch.stack([chunk.sum(), (chunk * chunk).sum(), (chunk * weights).sum()])
    return sample.cpu().numpy().tobytes() + sums.cpu().numpy().tobytes()


def model_fingerprint(model):
    """Class, name, config hash and a weight fingerprint of a model.

    The weight fingerprint covers every parameter and buffer: its name,
    shape and dtype, a strided sample of its values and float64 sums over
    all of them (:func:`_tensor_digest`), so a fine-tuned checkpoint, one
    changed weight deep inside a matrix, or another random initialisation of
    the same config all get another fingerprint; reading is one pass over
    the weights where they are (about 0.1 s for 135M parameters on a CPU).
    A tensor whose values cannot be read (meta device, packed quantised
    storage) makes the fingerprint unique to this model object (a random
    token kept on the model), so its activations are never shared with
    another model through the cache, even after its id is reused.
    """
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        cfg = {k: v for k, v in config.to_dict().items()
               if not k.startswith("_") and k != "transformers_version"}
    else:
        cfg = None
    h = hashlib.sha256()
    unreadable = []
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in tensors:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        try:
            if t.device.type == "meta":
                raise RuntimeError("meta tensor")
            h.update(_tensor_digest(t))
        except Exception:  # noqa: BLE001 -- see the docstring
            unreadable.append(name)
    if unreadable:
        token = getattr(model, "_attnprobe_fingerprint_token", None)
        if token is None:
            token = uuid.uuid4().hex
            try:
                object.__setattr__(model, "_attnprobe_fingerprint_token", token)
            except Exception:  # noqa: BLE001
                pass
        h.update(f"unreadable:{','.join(unreadable)}:{token}".encode())
    return {
        "class": type(model).__name__,
        "name_or_path": str(getattr(model, "name_or_path", "")),
        "config_sha256": _sha256(cfg),
        "weights": h.hexdigest(),
    }


def _without_call_state(definition):
    """A ``tokenizers`` JSON definition minus its truncation and padding values.

    The transformers wrapper leaves the settings of its last call there, so
    they would change the hash between two identical extractions. Cut out by
    position (the top-level fields come first in the serialisation) rather
    than by parsing, which costs ~0.2 s on a 50k-token vocabulary.
    """
    decoder = json.JSONDecoder()
    for name in ("truncation", "padding"):
        key = f'"{name}":'
        i = definition.find(key)
        if i < 0:
            continue
        try:
            _, end = decoder.raw_decode(definition, i + len(key))
        except ValueError:
            continue
        definition = definition[:i] + definition[end:]
    return definition


def tokenizer_fingerprint(tokenizer):
    """Class, name and a hash of the full tokenizer definition."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = _without_call_state(backend.to_str())
    else:
        try:
            body = sorted(tokenizer.get_vocab().items())
        except Exception:
            body = repr(tokenizer)
    special = getattr(tokenizer, "special_tokens_map", {})
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "sha256": _sha256([hashlib.sha256(str(body).encode()).hexdigest(), special]),
    }


def spec_key(spec):
    """Short stable key of a JSON-able extraction spec."""
    return _sha256(spec)[:24]


# -- atomic files -----------------------------------------------------------
def _tmp_name(path):
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path, obj):
    tmp = _tmp_name(path)
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_save_npy(path, array):
    tmp = _tmp_name(path)
    with open(tmp, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ShardedCache:
    """One cached extraction: a folder of shards, then merged layer buffers.

    Parameters
    ----------
    root : str or path-like
        The user's ``cache_dir``; this extraction lives in a subfolder.
    spec : dict
        JSON-able description of everything that determines the result.
    layers : sequence of int
        Layer indices, in output order.
    shard_size : int
        Texts per shard for a new folder. A folder being resumed keeps the
        shard size it was started with (recorded in ``meta.json``), so the
        shard size is not part of the key.
    n_texts : int
    """

    def __init__(self, root, spec, layers, shard_size, n_texts):
        self.spec = spec
        self.layers = [int(k) for k in layers]
        self.shard_size = int(shard_size)
        self.n_texts = int(n_texts)
        self.path = os.path.join(os.fspath(root), f"activations-{spec_key(spec)}")
        self._pending = {}  # shard -> list of (tmp, final) paths

    # -- paths ---------------------------------------------------------------
    def _p(self, name):
        return os.path.join(self.path, name)

    @property
    def meta_path(self):
        return self._p("meta.json")

    def _shard_layer(self, i, layer):
        return self._p(f"shard-{i:05d}.layer-{layer:04d}.npy")

    def _shard_lengths(self, i):
        return self._p(f"shard-{i:05d}.lengths.npy")

    def _merged(self, layer):
        return self._p(f"layer-{layer:04d}.npy")

    # -- metadata ----------------------------------------------------------------
    def read_meta(self):
        try:
            with open(self.meta_path, encoding="utf-8") as fh:
                meta = json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if meta.get("spec") != json.loads(json.dumps(self.spec, default=str)):
            raise RuntimeError(
                f"{self.meta_path} describes a different extraction than the "
                "one requested (hash collision or a hand-edited cache); "
                "delete that folder"
            )
        return meta

    def open(self):
        """Create the folder or resume it; remove temporary files of dead runs."""
        os.makedirs(self.path, exist_ok=True)
        for name in os.listdir(self.path):
            m = _TMP_RE.match(name)
            if m and not _pid_alive(int(m.group(1))):
                try:
                    os.remove(self._p(name))
                except FileNotFoundError:
                    pass
        meta = self.read_meta()
        if meta is None:
            meta = {"format": FORMAT_VERSION, "spec": self.spec,
                    "layers": self.layers, "shard_size": self.shard_size,
                    "n_shards": -(-self.n_texts // self.shard_size),
                    "complete_shards": [], "merged": False,
                    "d_model": None, "dtype": None}
            atomic_write_json(self.meta_path, meta)
        self.shard_size, self.n_shards = meta["shard_size"], meta["n_shards"]
        return meta

    def shard_slice(self, i):
        """Texts of shard ``i``."""
        return slice(i * self.shard_size, min((i + 1) * self.shard_size, self.n_texts))

    def _update_meta(self, **changes):
        # re-read first so that shards completed by a concurrent run survive
        meta = self.read_meta() or self.open()
        if "complete_shards" in changes:
            changes["complete_shards"] = sorted(
                set(meta["complete_shards"]) | set(changes["complete_shards"]))
        meta.update(changes)
        atomic_write_json(self.meta_path, meta)

    # -- writing one shard ------------------------------------------------------
    def allocate(self, i, n_tokens, d_model, dtype):
        """Memory-mapped temporary ``.npy`` files to compute shard ``i`` into."""
        arrays, pending = [], []
        for layer in self.layers:
            final = self._shard_layer(i, layer)
            tmp = _tmp_name(final)
            pending.append((tmp, final))
            arrays.append(np.lib.format.open_memmap(
                tmp, mode="w+", dtype=dtype, shape=(n_tokens, d_model)))
            self._pending[i] = pending
        return arrays

    def commit(self, i, lengths, arrays):
        """Flush, rename into place, then record shard ``i`` as complete."""
        pending = self._pending.pop(i, [])
        d_model, dtype = int(arrays[0].shape[1]), arrays[0].dtype.name
        for a in arrays:
            a.flush()
        for tmp, final in pending:
            _fsync_path(tmp)
            os.replace(tmp, final)
        atomic_save_npy(self._shard_lengths(i), np.asarray(lengths, np.int64))
        self._update_meta(complete_shards=[i], d_model=d_model, dtype=dtype)

    def abort(self, i):
        """Delete the temporary files of an unfinished shard."""
        for tmp, _ in self._pending.pop(i, []):
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass

    def abort_all(self):
        for i in list(self._pending):
            self.abort(i)

    # -- reading -------------------------------------------------------------------
    def _load_shard(self, i, layer, d_model):
        lengths = np.load(self._shard_lengths(i))
        data = np.load(self._shard_layer(i, layer), mmap_mode="r")
        if data.ndim != 2 or data.shape[0] != lengths.sum() or data.shape[1] != d_model:
            raise RuntimeError(
                f"shard {i} of {self.path} does not match its lengths; delete "
                "the folder to recompute it")
        return lengths, data

    def merge(self):
        """Write one ``layer-XXXX.npy`` per layer and ``offsets.npy``; drop shards.

        Needs every shard complete. Each layer's shard files are deleted as
        soon as its merged file is in place (renamed atomically, so a merged
        file that exists is whole); a rerun after an interruption skips the
        layers already merged.
        """
        meta = self.read_meta()
        missing = set(range(self.n_shards)) - set(meta["complete_shards"])
        if missing:
            raise RuntimeError(f"cannot merge: shards {sorted(missing)} are missing")
        if meta["merged"]:
            return
        lengths = np.concatenate(
            [np.load(self._shard_lengths(i)) for i in range(self.n_shards)])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        d_model, dtype = meta["d_model"], meta["dtype"]
        for layer in dict.fromkeys(self.layers):
            final = self._merged(layer)
            if not os.path.exists(final):
                self._merge_layer(layer, final, int(offsets[-1]), d_model, dtype)
            for i in range(self.n_shards):
                try:
                    os.remove(self._shard_layer(i, layer))
                except FileNotFoundError:
                    pass
        atomic_save_npy(self._p("offsets.npy"), offsets)
        self._update_meta(merged=True)

    def _merge_layer(self, layer, final, n_tokens, d_model, dtype):
        tmp = _tmp_name(final)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype,
                                            shape=(n_tokens, d_model))
            pos = 0
            for i in range(self.n_shards):
                _, data = self._load_shard(i, layer, d_model)
                out[pos : pos + data.shape[0]] = data
                pos += data.shape[0]
                del data
            out.flush()
            del out
            _fsync_path(tmp)
            os.replace(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def load(self):
        """One memory-mapped :class:`RaggedArray` per layer (needs :meth:`merge`)."""
        meta = self.read_meta()
        if not (meta and meta["merged"]):
            raise RuntimeError(f"{self.path} is not complete")
        offsets = np.load(self._p("offsets.npy"))
        out = []
        for layer in self.layers:
            data = np.load(self._merged(layer), mmap_mode="r")
            if data.shape != (int(offsets[-1]), meta["d_model"]):
                raise RuntimeError(
                    f"{self._merged(layer)} has shape {data.shape}, expected "
                    f"({int(offsets[-1])}, {meta['d_model']}); delete {self.path}")
            out.append(RaggedArray(data, offsets))
        return out
