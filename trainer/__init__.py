"""trainer: two-stream (spatial RGB + temporal flow) action recognition over flowprep shards."""
