"""The napari layer of rwth-sam: widgets, mouse and key bindings. Thin: the work is in ``rwth_sam.core``."""
