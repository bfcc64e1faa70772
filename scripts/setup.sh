#!/usr/bin/env bash
# Set up a fresh machine for rwth-sam: a virtual environment in .venv with the plugin, napari (PyQt6)
# and the test tools, plus the X tools the headless tests use (Xvfb, xdotool for real X input, xwd and
# ImageMagick for screenshots). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1; then
    packages=(xvfb xauth xdotool x11-apps imagemagick libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0
        libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xfixes0 libxcb-cursor0 libxkbcommon-x11-0
        libgl1 libegl1 libfontconfig1 libdbus-1-3)
    missing=()
    for package in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first: the SAM packages import torchvision. These two pins are the wheels this project's
# machines hold locally; elsewhere, install the torch build for your platform instead.
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
# sam2 ships as an sdist; without its optional CUDA extension it builds in seconds.
SAM2_BUILD_CUDA=0 python -m pip install -q --no-build-isolation "sam2>=1.1"
python -m pip install -q -e ".[pyqt6,testing]"
