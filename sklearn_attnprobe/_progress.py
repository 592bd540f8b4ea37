"""Progress for long fits: a delayed tqdm bar and a few log lines.

``verbose=0`` is silent. ``verbose=1`` shows a bar once a fit has run for
:data:`BAR_DELAY` seconds (short fits print nothing) and one closing line.
``verbose>=2`` also logs the objective about ten times per fit.
"""

import sys

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency; stay usable without it
    tqdm = None

BAR_DELAY = 2.0  # seconds before a bar appears


class ProgressReporter:
    """Counts steps toward ``total``; draws and logs according to ``verbose``."""

    def __init__(self, total, verbose, desc, unit="step"):
        self.total, self.verbose, self.desc = int(total), int(verbose or 0), desc
        self.done = 0
        self._next_log = max(1, self.total // 10)
        self.bar = None
        if self.verbose >= 1 and tqdm is not None:
            self.bar = tqdm(total=self.total, desc=desc, unit=unit, delay=BAR_DELAY,
                            leave=False, file=sys.stderr, dynamic_ncols=True)
        self._status = {}

    def advance(self, n):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def status(self, **values):
        """Latest values (shown in the bar, logged at verbose >= 2)."""
        self._status = values
        if self.bar is not None and self.bar.n and self.done % 10 == 0:
            self.bar.set_postfix(values, refresh=False)
        if self.verbose >= 2 and self.done >= self._next_log:
            self._next_log += max(1, self.total // 10)
            shown = ", ".join(f"{k} {_fmt(v)}" for k, v in values.items())
            self._print(f"{self.desc}: step {self.done}/{self.total}, {shown}")

    def close(self, summary):
        if self.bar is not None:
            self.bar.close()
        if self.verbose >= 1:
            self._print(f"{self.desc}: {summary}")

    @staticmethod
    def _print(line):
        print(line, file=sys.stderr, flush=True)


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)
