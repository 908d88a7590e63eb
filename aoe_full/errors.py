"""Exception types of aoe_full, all derived from :class:`gdat.errors.GdatError`.

Bad command-line input raises :class:`gdat.errors.UsageError`; the types here name
the other ways a tuning job can fail on user input.
"""
from gdat.errors import GdatError

__all__ = ["ModelLoadError", "TraceError", "TunedModelError", "CandidateError", "first_line"]


def first_line(e: BaseException, limit: int = 200) -> str:
    """``e`` in one line for a report: its type and the first ``limit`` characters
    of its message's first line (the type alone when it has no message)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:limit]}" if text else type(e).__name__


class ModelLoadError(GdatError):
    """The model file, factory or exported program cannot be loaded or run."""


class TraceError(GdatError):
    """The model cannot be captured as a torch.fx graph."""


class TunedModelError(GdatError):
    """A tuned-model file is unreadable or no longer matches its source model."""



class CandidateError(GdatError):
    """A candidate implementation (an engine, the offline package) cannot be built,
    fails, or is not equivalent to the model."""
