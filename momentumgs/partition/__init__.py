"""Scene partitioning (docs/method.md, Partitioning and merging): the scene's bounds, a grid of blocks, and
which cameras and SfM points each block trains from.

bounds.py      up axis (detected from the cameras), AABB (given or estimated), contraction into [0, 1]^3
grid.py        `Partition` and `Block`; which block a point lies in; cell bounds; checks on the blocks
visibility.py  which points a camera sees (`PointColumns`); the rectangle of a view where a cell lies
assign.py      `CameraAssigner`: which cameras train a block (centre, visibility)
points.py      which SfM points a block starts from (partition.block_points)
build.py       `partition_scene`: all of the above in order, for a scene and a PartitionConfig
io.py          partition.json
ssim.py        the paper's SSIM camera assignment on a rendered coarse model (a layer higher: it renders)
preview.py     the top-view image of a partition (a layer higher: it draws with cv2)

This file names the common entry points for the rest of the package; importing it loads neither ssim.py nor
preview.py.
"""

from momentumgs.partition.assign import CameraAssigner, CenterAssigner, VisibilityAssigner
from momentumgs.partition.bounds import PartitionError, detect_up_axis, ground_axes, parse_up_axis
from momentumgs.partition.build import partition_scene
from momentumgs.partition.grid import Block, Partition, few_view_warnings
from momentumgs.partition.io import load_partition, save_partition
from momentumgs.partition.visibility import cell_rectangles, points_in_view

__all__ = [
    "Block",
    "CameraAssigner",
    "CenterAssigner",
    "Partition",
    "PartitionError",
    "VisibilityAssigner",
    "cell_rectangles",
    "detect_up_axis",
    "few_view_warnings",
    "ground_axes",
    "load_partition",
    "parse_up_axis",
    "partition_scene",
    "points_in_view",
    "save_partition",
]
