# Root conftest: also covers the doctests collected from sklearn_attnprobe/.
import importlib.util

import torch

torch.set_num_threads(1)

# The activations docstrings run a tiny transformers model: without the [hf]
# extra their doctests cannot run, so they are not collected.
collect_ignore_glob = []
if importlib.util.find_spec("transformers") is None:
    collect_ignore_glob.append("sklearn_attnprobe/activations/*.py")
