"""Data preparation for real captures (`momentumgs prepare ...`).

photos.py       photos -> COLMAP scene (features, matching, mapping, undistortion, report), resumable;
                the one SfM pipeline, which the demo scene (momentumgs/demo/) runs too
known_poses.py  a COLMAP train/ + val/ scene from images with known poses; points by triangulation
meganerf.py     Mega-NeRF format (Mill-19, UrbanScene3D) -> known poses
matrixcity.py   MatrixCity transforms JSON (NeRF/Blender style) -> known poses
downsample.py   cached images_{f} folders
scan.py         size, memory estimate and warnings for a scene before training
images.py       image headers, sizes, GPS EXIF: checks that run before any heavy work
"""
