"""Triton kernels run in Triton's interpreter on CPU tensors when no GPU is present.

TRITON_INTERPRET must be set before the kernel module is imported, so it is set here, first.
"""

import os

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # foolbox imports GitPython

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
