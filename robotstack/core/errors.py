"""Exception types whose messages name the offending file / key / value and what was expected."""


class RobotstackError(Exception):
    """Base class: every error raised on bad user input derives from this."""


class StoreError(RobotstackError):
    """An episode store is missing, corrupt, of another layout, or an append was rejected."""


class ConfigError(RobotstackError):
    """A config file or override names an unknown key or a value of the wrong type."""


class UnknownTaskError(RobotstackError, KeyError):
    """A task name is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it plainly
        return str(self.args[0]) if self.args else ""


class DeviceUnavailableError(RobotstackError):
    """A teleop or hardware device is not present or its driver package is missing."""


class ArtifactError(RobotstackError):
    """An export artifact is missing, incomplete, tampered with, or does not match the arm it is deployed on."""
