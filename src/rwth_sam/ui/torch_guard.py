"""Import torch safely inside a running napari.

Importing torchvision after napari has created its OpenGL context crashed the process on machines
with software OpenGL (triton's LLVM clashes with Mesa's llvmpipe). rwth-sam never needs triton, so
unless it is already loaded, it is hidden before torch comes in: torch then treats it as absent.
"""

import sys

if "triton" not in sys.modules and "torch" not in sys.modules:
    sys.modules["triton"] = None  # makes `import triton` raise ImportError

import torch  # noqa: E402,F401
import torchvision  # noqa: E402,F401
