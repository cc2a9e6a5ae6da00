"""The SSIM camera assignment moved to momentumgs/partition/ssim.py; this name stays only until its last
importer moves to that one."""

from momentumgs.partition.ssim import make_assigner

__all__ = ["make_assigner"]
