"""Volume files with their geometry: medical formats (SimpleITK), 3D Slicer segmentations, HDF5 (h5py)."""
