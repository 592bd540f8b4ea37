"""Run the seed's probe comparison on real text and real activations.

    python -m benchmarks.study --quick          # one small task, one layer
    python -m benchmarks.study                  # every task, layers 8, 16 and 24

Steps: build the labelled tasks offline (``tasks.py``, with checksums); run
the language model once per task and keep the hidden states of the chosen
layers (an on-disk, resumable cache: a rerun skips the model); split 80/20,
scale with an :class:`~sklearn_attnprobe.ActivationScaler` fitted on the
training texts, and save one memory-mapped file per (task, layer); then fit
every (task, layer, method) configuration in parallel with joblib (loky
processes by default, a dask.distributed cluster with ``--backend dask``);
write results.csv, results.md, the seed's figures and, for the attention
probes, maximum-activating-example reports; for the tasks with known evidence,
the oracle probe and the attention probes' evidence recall (``evidence.py``).
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import tasks as task_lib
from .figures import figure_claims, markdown_tables, plot_figures, write_accuracy_table
from .models import DEFAULT_LAYERS, MODELS, load_model
from .protocol import METHODS, Config, run_configs

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"  # the committed results (--out to rewrite them)
# where a run writes unless told otherwise: outside the tracked results, in
# the current folder (ignored by git), one subfolder per kind of run
DEFAULT_OUT = Path("study-results")
# texts per class in the study (default run; --size-factor scales them): about
# 1,000 texts per task (test sets of 200) where the source allows it
# (natural_language: Greek has about 94 messages; code_language: Fortran 93
# windows); sized to the 2-core machine's hour
STUDY_PER_CLASS = {"bbc_topic": 200, "natural_language": 90, "code_language": 84,
                   "python_tests": 500, "python_library": 100, "data_source": 167,
                   "needle_language": 500, "needle_start": 500, "needle_middle": 500,
                   "needle_end": 500}
QUICK_PER_CLASS = 100


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.study",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"only the small task {task_lib.QUICK_TASK!r} at one layer "
                   "(a few minutes on 2 cores)")
    p.add_argument("--tasks", nargs="+", choices=task_lib.TASK_NAMES, default=None)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--model", choices=MODELS, default="smollm2")
    p.add_argument("--layers", nargs="+", type=int, default=None,
                   help="hidden-state indices (default: about 1/3 and 2/3 of the depth)")
    p.add_argument("--n-per-class", type=int, default=None,
                   help=f"texts per class (default: {QUICK_PER_CLASS} with --quick, "
                   "else per task: " + ", ".join(f"{k} {v}" for k, v in STUDY_PER_CLASS.items())
                   + ")")
    p.add_argument("--size-factor", type=float, default=1.0,
                   help="scale every task's default texts per class (a reduced run)")
    p.add_argument("--max-length", type=int, default=128,
                   help="truncate texts to this many tokens")
    p.add_argument("--max-iter", type=int, default=500,
                   help="most AdamW steps of the attention and mean-AdamW probes")
    p.add_argument("--n-jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--backend", choices=("loky", "dask"), default="loky",
                   help="joblib backend; dask starts a LocalCluster unless "
                   "--scheduler names one")
    p.add_argument("--scheduler", default=None,
                   help="address of a running dask scheduler (with --backend dask)")
    p.add_argument("--device", default="cpu",
                   help="where the probes train: cpu, cuda, auto (the language "
                   "model runs on cuda too when it is not cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default ./study-results/quick with --quick, "
                   "else ./study-results/full; --out benchmarks/results/study "
                   "rewrites the committed results)")
    p.add_argument("--cache", type=Path, default=None,
                   help="activation cache (default <out>/cache)")
    args = p.parse_args(argv)
    if args.tasks is None:
        args.tasks = [task_lib.QUICK_TASK] if args.quick else list(task_lib.TASK_NAMES)
    if args.layers is None:
        layers = DEFAULT_LAYERS[args.model]
        args.layers = list(layers[:1] if args.quick else layers)
    if args.out is None:
        args.out = DEFAULT_OUT / ("quick" if args.quick else "full")
    if args.cache is None:
        args.cache = args.out / "cache"
    return args


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _data_paths(args, task):
    stem = f"{args.model}-{task.name}-{task.sha256[:12]}-m{args.max_length}-s{args.seed}"
    folder = args.cache / stem
    return folder, {layer: folder / f"layer{layer}.npz" for layer in args.layers}


def _split(y, seed):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=0.2, stratify=y, random_state=seed)
    return np.sort(train), np.sort(test)


def prepare_activations(args, built):
    """Extract, split and scale; ``{task name: (layer paths, train, test, tokens)}``."""
    from sklearn_attnprobe import ActivationScaler
    from sklearn_attnprobe.activations import extract_activations, token_strings

    todo = {t.name for t in built
            if not all(p.exists() for p in _data_paths(args, t)[1].values())}
    model = tokenizer = description = None
    if todo:
        texts = [s for t in built for s in t.texts]
        start = time.perf_counter()
        model, tokenizer, description = load_model(args.model, args.layers, texts)
        _log(f"loaded {description} in {time.perf_counter() - start:.0f} s")
    prepared = {}
    for task in built:
        folder, paths = _data_paths(args, task)
        train, test = _split(task.y, args.seed)
        tokens_path = folder / "tokens.json"
        model_path = folder / "model.txt"  # what made the cached activations
        if task.name not in todo:
            if description is None and model_path.exists():
                description = model_path.read_text()
        else:
            start = time.perf_counter()
            acts = extract_activations(
                model, tokenizer, list(task.texts), layers=list(args.layers),
                max_length=args.max_length, drop_first_token=True, dtype="float16",
                cache_dir=folder / "shards", device=_model_device(args.device))
            n_tokens = int(acts[0].lengths.sum())
            seconds = time.perf_counter() - start
            _log(f"{task.name}: {len(task.texts)} texts, {n_tokens} tokens, "
                 f"{seconds:.0f} s ({n_tokens / max(seconds, 1e-9):.0f} tokens/s)")
            tokens = token_strings(tokenizer, list(task.texts), max_length=args.max_length,
                                   drop_first_token=True, decode=True)
            tokens_path.write_text(json.dumps(tokens))
            model_path.write_text(description)
            if task.needle_spans is not None:
                # which rows hold the label-bearing sentence (evidence.py)
                from .evidence import write_evidence

                write_evidence(folder, tokenizer, task.texts, task.needle_spans,
                               max_length=args.max_length)
            # the layer files last: their presence marks the task as done
            for layer, X in zip(args.layers, acts):
                # the scaler sees the training texts only; the CV folds inside
                # share it, as a Pipeline fitted before the search would
                scaler = ActivationScaler().fit(X[train])
                scaler.transform(X).save(paths[layer])
        prepared[task.name] = (paths, train, test, tokens_path)
    return prepared, description


def _model_device(device):
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _parallel(args, configs):
    if args.backend == "loky":
        return run_configs(configs, n_jobs=args.n_jobs)
    from dask.distributed import Client, LocalCluster
    from joblib import parallel_config

    if args.scheduler:
        client, cluster = Client(args.scheduler), None
    else:
        cluster = LocalCluster(n_workers=args.n_jobs, threads_per_worker=1,
                               processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        with parallel_config(backend="dask"):
            return run_configs(configs, n_jobs=-1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _machine():
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    built = []
    for name in args.tasks:
        start = time.perf_counter()
        n = args.n_per_class or (QUICK_PER_CLASS if args.quick else
                                 max(1, round(STUDY_PER_CLASS[name] * args.size_factor)))
        built.append(task_lib.build_task(name, n_per_class=n, seed=args.seed))
        t = built[-1]
        _log(f"task {name}: {len(t.texts)} texts, {t.n_classes} classes, sha256 "
             f"{t.sha256[:16]}... ({time.perf_counter() - start:.1f} s)")
    (args.out / "datasets.json").write_text(
        json.dumps([task_lib.manifest(t) for t in built], indent=1, default=str))

    prepared, description = prepare_activations(args, built)
    t_extract = time.perf_counter() - t0
    configs = []
    for task in built:
        paths, train, test, tokens_path = prepared[task.name]
        for layer in args.layers:
            for method in args.methods:
                configs.append(Config(
                    task=task.name, n_classes=task.n_classes, layer=layer, method=method,
                    data_path=str(paths[layer]), y=np.asarray(task.y), train=train,
                    test=test, seed=args.seed, max_iter=args.max_iter,
                    tokens_path=str(tokens_path), report_dir=str(args.out / "reports"),
                    probe_dir=str(args.out / "probes"), device=args.device))
    _log(f"{len(configs)} configurations, 5-fold CV over 4 weight decays each, "
         f"{args.backend} backend, n_jobs={args.n_jobs}")
    start = time.perf_counter()
    rows = _parallel(args, configs)
    t_fit = time.perf_counter() - start
    total = time.perf_counter() - t0

    import csv

    from . import stats

    pred_rows = stats.prediction_rows(rows, configs)
    stats.write_csv(pred_rows, args.out / "predictions.csv")
    # the claims, and the pairs the figures plot that no claim covers
    intervals = stats.pairwise_intervals(pred_rows, seed=args.seed,
                                         claims=stats.CLAIMS + figure_claims())
    stats.write_csv(intervals, args.out / "intervals.csv")
    with open(args.out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_accuracy_table(rows, args.out / "accuracy.csv")
    needle = [t.name for t in built if t.kind == "needle"]
    tables = markdown_tables(rows, needle_tasks=needle)
    tables += "\n\n" + stats.claims_markdown(intervals)
    info = {
        "command": "python -m benchmarks.study " + " ".join(argv if argv is not None
                                                           else sys.argv[1:]),
        "model": description or args.model, "layers": args.layers,
        "max_length": args.max_length, "max_iter": args.max_iter,
        "tasks": {t.name: {"n_texts": len(t.texts), "n_classes": t.n_classes,
                           "sha256": t.sha256} for t in built},
        "machine": _machine(), "backend": args.backend, "n_jobs": args.n_jobs,
        "seconds": {"build_and_extract": round(t_extract, 1), "fit": round(t_fit, 1),
                    "total": round(total, 1)},
    }
    (args.out / "run.json").write_text(json.dumps(info, indent=1))
    footer = (f"Model {info['model']}, layers {args.layers}, texts truncated to "
              f"{args.max_length} tokens (first token dropped); at most {args.max_iter} "
              "AdamW steps (stopping when converged). "
              f"{info['machine']}; {args.backend} backend, n_jobs={args.n_jobs}. "
              f"Wall time {total:.0f} s (data and activations {t_extract:.0f} s, "
              f"probes {t_fit:.0f} s).")
    (args.out / "results.md").write_text(tables + "\n\n" + footer + "\n")
    figures = plot_figures(rows, args.out, intervals)
    from .position_figure import plot_position

    if plot_position(pred_rows, args.out / "accuracy_by_position.png"):
        figures.append(str(args.out / "accuracy_by_position.png"))
    from . import evidence

    # the oracle and the evidence recall, for the tasks with known evidence
    # (also appends its section to results.md); nothing without such a task
    evidence_files = evidence.analyse(args.out, built, args, pred_rows)
    print(tables + "\n\n" + footer)
    written = [args.out / name for name in
               ("results.csv", "accuracy.csv", "results.md", "run.json", "datasets.json",
                "predictions.csv", "intervals.csv")]
    written += [Path(f) for f in figures] + evidence_files
    written += report_files(configs)
    written += sorted((args.out / "probes").glob("*.safetensors"))
    print(describe_outputs(args.out, written, args.cache))
    return rows


def report_files(configs):
    """The report files the configurations wrote (attention probes only)."""
    found = []
    for c in configs:
        if not c.report_dir:
            continue
        stem = f"{c.task}_L{c.layer}_{c.method}"
        found += sorted(Path(c.report_dir).glob(stem + ".*"))
    return found


def describe_outputs(out, written, cache):
    """The closing lines: every file the run wrote, and the activation cache."""
    lines = [f"wrote {len(written)} files in {out}/:"]
    for path in written:
        try:
            shown = Path(path).relative_to(out)
        except ValueError:
            shown = path
        lines.append(f"  {shown}")
    lines.append(f"activation cache (a rerun skips the model): {cache}/")
    return "\n".join(lines)
