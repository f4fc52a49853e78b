"""Domain errors. The API maps each class to one HTTP status, once."""


class PVCError(Exception):
    """Base of every error the core raises on purpose.

    ``field`` names the input field at fault, when there is one.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationError(PVCError):
    """Bad input: nothing was changed."""


class NotFoundError(PVCError):
    """The named node, VM or setting does not exist."""


class ConflictError(PVCError):
    """A compare-and-set lost its race, or the thing already exists."""


class PluginError(PVCError):
    """The plugin set is unusable (duplicate names, unknown hooks, bad objects)."""


class LockTimeout(PVCError):
    """A ZooKeeper lock was not obtained within its timeout."""


class Unavailable(PVCError):
    """ZooKeeper cannot be reached (or did not answer in time): nothing could be read or changed."""
