"""momentumgs: large-scene Gaussian splatting with the Momentum-GS method."""

__version__ = "0.1.0"
