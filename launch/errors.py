"""Exception types of the launchers and the emulated-network testbed."""
from gdat.errors import GdatError

__all__ = ["TestbedError"]


class TestbedError(GdatError):
    """The emulated-network testbed cannot be made (not root, no namespaces, no tc)."""

    __test__ = False  # not a pytest test class despite the name
