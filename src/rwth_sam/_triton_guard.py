"""Keep triton out when torch is first imported inside a running napari.

Importing torchvision after napari has created its OpenGL context crashed the process on machines
with software OpenGL (triton's LLVM clashes with Mesa's llvmpipe, which napari's GL context has
loaded). rwth-sam never needs triton, so when napari is already loaded and neither torch nor triton
is, triton is hidden: torch then treats it as absent. Scripts that import rwth-sam without napari,
or import torch themselves first, are left alone.
"""

import sys

if ("napari" in sys.modules or "vispy" in sys.modules) and "torch" not in sys.modules and "triton" not in sys.modules:
    sys.modules["triton"] = None  # makes `import triton` raise ImportError
