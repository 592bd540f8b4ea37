"""Where the benchmarks write their results: ``<stem>.json`` and ``<stem>.md``."""

import json
import os


def save_results(out_dir, stem, data, markdown, indent=1):
    """Write ``data`` as JSON and ``markdown`` beside it in ``out_dir`` (created)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as fh:
        json.dump(data, fh, indent=indent)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as fh:
        fh.write(markdown)
