"""Data: a `data.source` (the bundled demo digits, an image folder, an archive, a torchvision
dataset) → validated, decoded images → the prepared dataset (images.npy, labels.npy,
manifest.json) → training batches.

sources.py lists items, archives.py reads tar/zip members safely, formats.py opens untrusted images
(raster formats only), decode.py turns them into arrays in worker processes (pool.py), prepare.py
writes the prepared dataset (rejections.py: what a prepare failing for rejected files says and
lists), dataset.py memory-maps it and serves batches (`BatchLoader`); survey.py looks at a sample of
a source's images (sizes, channels, classes) for `sagan init`.
May import the top-level modules of sagan_core only.
"""
