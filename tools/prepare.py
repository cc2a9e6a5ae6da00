"""Data preparation from a source checkout: the same as `momentumgs prepare ...`.

python tools/prepare.py colmap PHOTOS OUT           photos -> COLMAP scene (resumable)
python tools/prepare.py meganerf SRC OUT            Mill-19 / UrbanScene3D (Mega-NeRF format)
python tools/prepare.py matrixcity SRC OUT          MatrixCity transforms JSON
python tools/prepare.py downsample SCENE --factor 4
python tools/prepare.py scan SCENE -c CONFIG
"""

import sys

from momentumgs.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
