"""What the task builders share: text length bounds and seeded sampling.

Every random draw of a build comes from :func:`seeded_rng`, a
``random.Random`` seeded by a string made of the task name, the seed and the
draw's purpose, so that builds are reproducible and independent of one another.
"""

import random
from typing import NamedTuple

__all__ = []

MIN_CHARS, MAX_CHARS = 150, 900


class Labelled(NamedTuple):
    """What a builder returns; ``build_task`` shuffles and hashes it into a Task.

    ``per_class[k]`` lists the texts of class ``k``, or ``(text, (start,
    end))`` pairs when ``spans`` is true (the needle's character span).
    """

    per_class: list
    class_names: tuple
    kind: str
    source: str
    license: str
    provenance: dict
    spans: bool | None = None


def seeded_rng(name, seed, *parts):
    return random.Random(":".join([name, str(seed), *map(str, parts)]))


def take(pool, n, rng, what):
    """``n`` items drawn without replacement from ``pool`` (a list)."""
    if n > len(pool):
        raise ValueError(f"{what}: only {len(pool)} distinct texts are available, "
                         f"asked for {n} (lower n_per_class)")
    return rng.sample(pool, n)
