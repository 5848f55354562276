"""flowprep: videos -> quantized dense optical flow + RGB frames in self-describing HDF5 shards."""

__version__ = "0.1.0"
