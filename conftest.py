# Root conftest: also covers the doctests collected from sklearn_attnprobe/.
import torch

torch.set_num_threads(1)
