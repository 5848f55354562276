"""From a flowprep output folder to batches on the device, in the order data flows.

errors (``DataError``) -> shards (the folder's index: manifests, attributes) -> lists (split files resolved
against it) -> read (frames and flow fields of one video) -> crops (boxes, CPU crop + resize) -> datasets
(one stream's items) and joint_datasets (both streams' items, one crop) -> batches (the ring of shared
buffers) -> loaders (the DataLoaders of ``trainer fit``) -> transforms (flips, and the device side:
dequantize, crop, normalise).

Each module is imported by its own name (``from trainer.data.shards import index_shards``); this package
re-exports nothing.
"""
