"""`python -m rwth_sam [IMAGE]`: napari with the rwth-sam widget docked and an image open.

Without IMAGE, the synthetic battery cell volume (sample data) is opened. IMAGE may be anything napari
opens, and the medical and CT formats this plugin reads (NIfTI, NRRD, MetaImage, a DICOM folder or file, a
3D Slicer .seg.nrrd, HDF5), with their geometry.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rwth_sam.core.models.weights import CHECKPOINT_ENV_VAR, MODEL_ENV_VAR


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rwth_sam", description=__doc__.splitlines()[0])
    parser.add_argument(
        "image", nargs="?", help="an image file or folder napari can open (default: the battery sample)"
    )
    parser.add_argument("--volume", type=int, help="which volume of a 4D file to open (0 is the first)")
    parser.add_argument("--model", help=f"the model to start with (a registry name; default: ${MODEL_ENV_VAR})")
    parser.add_argument(
        "--checkpoint", type=Path, help=f"a local checkpoint file for it, used offline (default: ${CHECKPOINT_ENV_VAR})"
    )
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best this machine has)")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and not args.checkpoint.is_file():
        parser.error(f"checkpoint file not found: {args.checkpoint}")

    from rwth_sam.core.errors import RwthSamError
    from rwth_sam.core.models.builtin import import_upstream_packages
    from rwth_sam.core.models.device import available_devices
    from rwth_sam.core.models.registry import get_model_spec

    if args.model is not None:
        try:
            get_model_spec(args.model)
        except RwthSamError as error:
            parser.error(str(error))
    if args.device is not None and args.device not in available_devices():
        parser.error(f"device '{args.device}' is not available here; choose one of: {', '.join(available_devices())}")
    import_upstream_packages()  # before napari starts: not in the worker at the first click
    import napari

    from rwth_sam.ui.volume_files import get_volume_reader, read_volume_file

    viewer = napari.Viewer()
    if args.image and get_volume_reader(args.image) is not None:
        for layer_data in read_volume_file(args.image, volume=args.volume):
            if layer_data[0] is not None:  # None: the file could not be opened, and the user was told why
                viewer.add_layer(napari.layers.Layer.create(*layer_data))
    elif args.image:
        viewer.open(args.image, plugin=_other_reader(args.image))
    else:
        viewer.open_sample("rwth-sam", "battery_volume")
    _, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
    if args.model is not None:
        widget.model.value = args.model
    if args.checkpoint is not None:
        widget.checkpoint.value = args.checkpoint
    if args.device is not None:
        widget.device.value = args.device
    napari.run()


def _other_reader(path: str) -> str | None:
    """The plugin to open a path rwth-sam declines: the one other plugin that claims it (rwth-sam claims
    every folder, for DICOM), or None to let napari choose."""
    from npe2 import PluginManager

    others = {reader.plugin_name for reader in PluginManager.instance().iter_compatible_readers([path])}
    others.discard("rwth-sam")
    return others.pop() if len(others) == 1 else None


if __name__ == "__main__":
    main()
