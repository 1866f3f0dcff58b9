"""User-facing errors.

Every error a person can cause (a bad config, a missing file, a wrong image, a checkpoint of another
architecture) is raised as a :class:`VitkitError` whose message is one sentence naming what was wrong and
what was expected. The CLI prints that sentence and exits non-zero without a traceback.
"""


class VitkitError(Exception):
    """An error caused by input a person gave; its message is meant to be read, not debugged."""


class ConfigError(VitkitError, ValueError):
    """A config key is unknown, ill-typed or out of range."""


class DataError(VitkitError):
    """A data set, file or image is missing, truncated, corrupt or of the wrong kind."""


class CheckpointError(VitkitError):
    """A checkpoint is missing, truncated or does not fit the model it is loaded into."""


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocator's failure (the CPU's, CUDA's or Python's): a smaller model or batch fixes
    it, so it is said as one sentence, not reported as a bug."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(s in text for s in ("not enough memory", "DefaultCPUAllocator",
                                                                   "out of memory"))
