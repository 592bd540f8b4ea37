"""Out-of-core fit: a memory-mapped float16 RaggedArray larger than memory.

Writes a float16 RaggedArray (d_model 2304, 16-512 tokens per text; ``--size-gb``,
default 30) to disk, drops the file from the page cache (``posix_fadvise
DONTNEED`` after ``fsync``: no root needed, clean pages only), and measures in
one run:

* the disk's sequential read speed, on the first ``--read-gb`` of the file;
* the in-memory step speed: the same 8-head probe, ``batch_size=512``, on a
  packed in-memory subset of ``2 * batch_size`` texts;
* the streamed fit: ``AttentionProbeClassifier(n_heads=8, batch_size=512)`` on
  the mapped file for ``--steps`` AdamW steps, with peak anonymous memory
  (``RssAnon`` of /proc/self/status, sampled every 10 ms by a thread; the mapped
  pages are page cache and not counted) and throughput.

Targets (issue 13): peak RssAnon <= 3 GB; streamed throughput (bytes of float16
activations per second) >= 0.5 * min(disk read speed, in-memory speed).

    python -m benchmarks.bench_out_of_core --size-gb 30 --out benchmarks/results
"""

import argparse
import json
import os
import platform
import threading
import time

import numpy as np
import torch

from sklearn_attnprobe import AttentionProbeClassifier, RaggedArray
from sklearn_attnprobe._modules import AttentionProbeModule
from sklearn_attnprobe._packing import pack
from sklearn_attnprobe._training import TrainingSet, fit_module

from benchmarks._results import save_results

GB = 1e9


def rss_anon():
    """Anonymous resident memory of this process, in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("RssAnon not in /proc/self/status")


class PeakSampler:
    """Peak RssAnon while the ``with`` block runs."""

    def __init__(self, period=0.01):
        self.period, self.peak = period, 0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            time.sleep(self.period)

    def __enter__(self):
        self.peak = rss_anon()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())
        return False


def drop_cache(path):
    """Evict the file's clean pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_ragged(path, size_bytes, d, min_len, max_len, seed):
    """A float16 ``.npy`` token buffer of about ``size_bytes``; returns offsets."""
    rng = np.random.default_rng(seed)
    mean_len = (min_len + max_len) / 2
    n = max(1, int(size_bytes / (mean_len * d * 2)))
    lengths = rng.integers(min_len, max_len + 1, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                     shape=(int(offsets[-1]), d))
    # one random pool reused with shifts: generating 15e9 normals would dominate
    pool = rng.standard_normal((1 << 16, d)).astype(np.float16)
    chunk = 1 << 16
    for i, s in enumerate(range(0, len(data), chunk)):
        e = min(s + chunk, len(data))
        data[s:e] = np.roll(pool, i, axis=0)[: e - s]
        if i % 64 == 63:
            data.flush()
    data.flush()
    del data
    return offsets


def read_speed(path, n_bytes, block=1 << 24):
    """Sequential read speed (bytes/s) of the file's first ``n_bytes``."""
    buf = bytearray(block)
    done, start = 0, time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while done < n_bytes:
            got = fh.readinto(buf)
            if not got:
                break
            done += got
    return done / (time.perf_counter() - start), done


def in_memory_speed(X, y, batch_size, steps, heads, seed, dtype):
    """Texts/s of AdamW steps on a packed in-memory subset (packing excluded),
    in the compute dtype the streamed fit uses."""
    batch = pack(X, dtype, "cpu")
    ts = TrainingSet(batch, y, np.ones(len(y)), device="cpu", dtype=torch.float32,
                     seed=seed)
    module = AttentionProbeModule(X.d_model, heads, 1,
                                  generator=torch.Generator().manual_seed(seed))
    fit_module(module, ts, solver="adamw", learning_rate=1e-3, max_iter=1,
               batch_size=batch_size, weight_decay=0.0, n_iter_no_change=None)  # warm-up
    start = time.perf_counter()
    fit_module(module, ts, solver="adamw", learning_rate=1e-3, max_iter=steps,
               batch_size=batch_size, weight_decay=0.0, n_iter_no_change=None)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=30.0)
    parser.add_argument("--d-model", type=int, default=2304)
    parser.add_argument("--min-length", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--in-memory-steps", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--read-gb", type=float, default=4.0)
    parser.add_argument("--path", default="/tmp/attnprobe_out_of_core.npy")
    parser.add_argument("--keep", action="store_true", help="keep the data file")
    parser.add_argument("--predict-texts", type=int, default=0,
                        help="also time decision_function on the first N texts")
    parser.add_argument("--out", default=None, help="folder for out_of_core.{json,md}")
    args = parser.parse_args(argv)
    if args.size_gb <= 0 or args.steps < 1 or args.batch_size < 1:
        raise ValueError("--size-gb, --steps and --batch-size must be positive")
    torch.manual_seed(0)
    d, bs = args.d_model, args.batch_size
    res = {"size_gb_requested": args.size_gb, "d_model": d, "batch_size": bs,
           "n_heads": args.heads, "steps": args.steps, "cpu_threads": torch.get_num_threads(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                      f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GB:.1f} GB RAM"}
    try:
        t = time.perf_counter()
        offsets = write_ragged(args.path, args.size_gb * GB, d, args.min_length,
                               args.max_length, 0)
        res["write_s"] = time.perf_counter() - t
        X = RaggedArray(np.load(args.path, mmap_mode="r"), offsets)
        res.update(file_gb=X.data.nbytes / GB, n_texts=len(X), n_tokens=int(X.n_tokens))
        y = np.arange(len(X)) % 2

        drop_cache(args.path)
        speed, n_read = read_speed(args.path, int(args.read_gb * GB))
        res.update(disk_read_gb_s=speed / GB, disk_read_gb=n_read / GB)

        sub = X[np.arange(min(len(X), 2 * bs))]
        sub = sub.pack()  # an in-memory copy of the subset
        sub_mem = RaggedArray(np.array(sub.data), sub.offsets)
        mean_len = float(X.lengths.mean())
        # the compute dtype of the streamed fit below ("auto": float16 where
        # the fused kernel reads it directly), so both sides do the same work
        dtype = AttentionProbeClassifier()._compute_dtype(X)
        res["compute_dtype"] = str(dtype).replace("torch.", "")
        texts_s = in_memory_speed(sub_mem, y[: len(sub_mem)], bs, args.in_memory_steps,
                                  args.heads, 0, dtype)
        res["in_memory_texts_s"] = texts_s
        res["in_memory_gb_s"] = texts_s * float(sub_mem.lengths.mean()) * d * 2 / GB
        del sub_mem, sub

        drop_cache(args.path)
        est = AttentionProbeClassifier(n_heads=args.heads, batch_size=bs,
                                       max_iter=args.steps, n_iter_no_change=None,
                                       learning_rate=1e-3, random_state=0)
        base = rss_anon()
        with PeakSampler() as sampler:
            t = time.perf_counter()
            est.fit(X, y)
            fit_s = time.perf_counter() - t
        texts = args.steps * bs
        res.update(streamed_fit_s=fit_s, streamed_texts_s=texts / fit_s,
                   streamed_tokens_s=texts * mean_len / fit_s,
                   streamed_gb_s=texts * mean_len * d * 2 / fit_s / GB,
                   rss_anon_before_gb=base / GB, peak_rss_anon_gb=sampler.peak / GB,
                   n_iter=int(est.n_iter_))
        if args.predict_texts:
            # prediction streams too: the file front to back, blocks read ahead
            drop_cache(args.path)
            n_pred = min(len(X), args.predict_texts)
            part = X[:n_pred] if n_pred < len(X) else X
            with PeakSampler() as sampler:
                t = time.perf_counter()
                est.decision_function(part)
                pred_s = time.perf_counter() - t
            pred_bytes = float(part.lengths.sum()) * d * 2
            res.update(predict_texts=n_pred, predict_s=pred_s,
                       predict_gb_s=pred_bytes / pred_s / GB,
                       predict_peak_rss_anon_gb=sampler.peak / GB)
        bound = min(res["disk_read_gb_s"], res["in_memory_gb_s"])
        res["throughput_ratio"] = res["streamed_gb_s"] / bound
        res["target_memory_met"] = res["peak_rss_anon_gb"] <= 3.0
        res["target_throughput_met"] = res["throughput_ratio"] >= 0.5
    finally:
        if not args.keep and os.path.exists(args.path):
            os.remove(args.path)
    print(json.dumps(res, indent=2))
    if args.out:
        save_results(args.out, "out_of_core", res, report(res), indent=2)
    return res


def report(res):
    """The results as a Markdown table (what the docs and the issue quote)."""
    rows = [
        ("file", f"{res['file_gb']:.1f} GB float16, {res['n_texts']:,} texts, "
                 f"d_model {res['d_model']}"),
        ("disk sequential read", f"{res['disk_read_gb_s']:.2f} GB/s"),
        ("in-memory steps", f"{res['in_memory_gb_s']:.3f} GB/s "
                            f"({res['in_memory_texts_s']:.0f} texts/s, "
                            f"{res['compute_dtype']})"),
        ("streamed fit", f"{res['streamed_gb_s']:.3f} GB/s ({res['streamed_texts_s']:.0f} "
                         f"texts/s, {res['n_iter']} steps of {res['batch_size']} texts, "
                         f"{res['streamed_fit_s']:.0f} s)"),
        ("throughput / min(disk, in-memory)",
         f"{res['throughput_ratio']:.2f} (target >= 0.5: "
         f"{'met' if res['target_throughput_met'] else 'missed'})"),
        ("peak RssAnon, fit", f"{res['peak_rss_anon_gb']:.2f} GB (target <= 3 GB: "
                              f"{'met' if res['target_memory_met'] else 'missed'})"),
    ]
    if "predict_s" in res:
        rows.append(("decision_function", f"{res['predict_texts']:,} texts in "
                     f"{res['predict_s']:.0f} s ({res['predict_gb_s']:.3f} GB/s), "
                     f"peak RssAnon {res['predict_peak_rss_anon_gb']:.2f} GB"))
    lines = ["| measurement | result |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines.append(f"\nMachine: {res['machine']}; {res['cpu_threads']} torch threads; "
                 f"{res['n_heads']}-head probe.\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
