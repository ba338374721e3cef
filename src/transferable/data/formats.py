"""The preprocessing choices a shard set is made with, named once: the Snakefile's path grammar (paths.py),
the decoder (pixels.py) and the writer (shards.py) read them. Constants only: light to import, and an edit
here reruns the shards and what reads them."""

RESIZES = ("fast", "bicubic", "imagemagick")  # pixels.decode says what each does
SHARD_FORMATS = ("raw", "jpeg")
