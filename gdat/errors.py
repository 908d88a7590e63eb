"""Exception types of gdat and aoe_full.

Every error a user can cause derives from :class:`GdatError`; command-line entry
points catch it, print its one-line message and exit with status 2.
"""

__all__ = [
    "GdatError",
    "UsageError",
    "PlanError",
    "PlanNotExpressible",
    "BankError",
    "ProfileError",
    "ModelMismatchError",
    "GdatWarning",
]


class GdatError(Exception):
    """Base of every error gdat raises on bad input or a broken environment."""


class UsageError(GdatError):
    """A command-line option or environment variable has an invalid value."""


class PlanError(GdatError):
    """A bucket plan is malformed or does not match the model it is applied to."""


class PlanNotExpressible(PlanError):
    """A valid plan that a target format (DDP caps, HCCL indices) cannot express exactly."""


class BankError(GdatError):
    """A knowledge-base entry is unreadable, corrupt or of another schema version."""


class ProfileError(GdatError):
    """A profile file or recording is malformed or incomplete."""


class ModelMismatchError(GdatError):
    """Ranks were built with different models; names the first differing parameter."""


class GdatWarning(UserWarning):
    """Base of gdat's warnings (an unusable bank entry, an approximated plan).
    Under ``gdat-run`` each is shown as one ``gdat: warning: ...`` line."""
