"""The demo: both packages' command lines end to end on the built-in sample (``python -m flowprep.demo``)."""
