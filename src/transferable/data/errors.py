"""The data errors, in a module that imports nothing: the ingest, the shard writer, the decoder and the
reader raise them, and a training job imports them without the ingest's or the writer's dependencies."""


class IngestError(RuntimeError):
    """Raw data that cannot be read; the message names the file (and member)."""


class ShardError(RuntimeError):
    """A shard file that is missing, of the wrong size or content: names the part and how to rebuild it."""
