"""`python -m rwth_sam [IMAGE]`: napari with the rwth-sam widget docked and an image open.

Without IMAGE, the synthetic battery cell volume (sample data) is opened.
"""

from __future__ import annotations

import argparse


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rwth_sam", description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", help="an image file napari can open (default: the battery sample)")
    args = parser.parse_args(argv)

    import torch  # noqa: F401  (torch before napari's GL context: see rwth_sam._triton_guard)
    import napari

    viewer = napari.Viewer()
    if args.image:
        viewer.open(args.image)
    else:
        viewer.open_sample("rwth-sam", "battery_volume")
    viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
    napari.run()


if __name__ == "__main__":
    main()
