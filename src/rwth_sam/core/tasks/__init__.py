"""What users run on a model: automatic segmentation, 3D propagation."""
