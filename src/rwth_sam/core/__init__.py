"""UI-free core of rwth-sam: models, weights, preprocessing, coordinates, segmentation.

Nothing under this package imports Qt or napari, so scripts, notebooks and batch jobs can use it.
"""
