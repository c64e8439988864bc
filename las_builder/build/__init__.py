"""Build LAS: plan -> find items -> read and reproject -> harmonise labels -> Zarr shards."""
