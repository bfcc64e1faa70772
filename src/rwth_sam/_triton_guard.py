"""Keep triton out of the process: importing it after napari's OpenGL context exists kills the process.

With software OpenGL (Mesa llvmpipe, as on VMs, remote desktops and Xvfb), triton's LLVM clashes
with the one llvmpipe has loaded: the first ``import triton`` after napari has drawn its canvas
ends in SIGSEGV. torch pulls triton in lazily (``torchvision.ops`` imports ``torch._dynamo``), so
a first click that loads a model did it in a worker thread. rwth-sam never needs triton (nothing
here is compiled), so unless triton is loaded already it is hidden, whatever the entry point and
whether torch or napari came first: torch then treats it as absent. A triton loaded before rwth-sam
is left alone; that is safe when it came before the GL context, which is the only way it can have
survived. A script that wants triton (``torch.compile`` on a GPU) imports it before rwth-sam.

This module is imported first by ``rwth_sam/__init__.py``, so every entry point passes here before
anything imports torch.
"""

import sys

if "triton" not in sys.modules:
    sys.modules["triton"] = None  # makes `import triton` raise ImportError, find_spec return None
