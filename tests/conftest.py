"""Triton kernels run in Triton's interpreter on CPU tensors when no GPU is present.

TRITON_INTERPRET must be set before the kernel module is imported, so it is set here, first.
"""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # foolbox imports GitPython

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _compiles(item) -> bool:
    """Whether a test uses tests/test_aot.py's compiles (its fixtures compiled, compiled_by_every_version)."""
    return any(name.startswith("compiled") for name in getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a GPU: skipped, not failed, without one. The ahead-of-time compile tests run
    last, so that their compiles (started below) overlap everything else."""
    items.sort(key=lambda item: _compiles(item))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make gpu-check on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_collection_finish(session):
    """Start tests/test_aot.py's compiles in the background as soon as its tests are collected."""
    users = [item for item in session.items if _compiles(item)]
    if users and not session.config.option.collectonly:
        users[0].module.start_compiles(Path(tempfile.mkdtemp(prefix="kwta-aot-")))
