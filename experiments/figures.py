"""Writing a figure together with the data it was drawn from, side by side: the plots/ scripts' one way out."""

import io
import json
import os

import numpy as np
from matplotlib.figure import Figure

from kwta.checkpoint import atomic_write


def save_figure(figure: Figure, png_path: str, *, arrays: dict | None = None, summary: dict | None = None) -> list[str]:
    """Write `png_path`, the same figure as PDF, `arrays` as .npz and `summary` as .json beside it; return the paths.

    Every file is written atomically, so a reader never sees a figure without (or with a stale) data file.
    """
    if not png_path.endswith(".png"):
        raise ValueError(f"figure path must end in .png, got {png_path}")
    stem = png_path[: -len(".png")]
    paths = []
    for path, fmt in ((png_path, "png"), (stem + ".pdf", "pdf")):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=150)
        atomic_write(path, buffer.getvalue())
        paths.append(path)
    if arrays is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(stem + ".npz", buffer.getvalue())
        paths.append(stem + ".npz")
    if summary is not None:
        atomic_write(stem + ".json", json.dumps(summary, indent=2) + "\n")
        paths.append(stem + ".json")
    return [os.path.normpath(path) for path in paths]
