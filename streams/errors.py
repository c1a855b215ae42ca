"""The one exception root of screening-streams and its families.

Every error the package raises on purpose derives from :class:`ScreeningStreamsError`;
third-party errors are wrapped with ``raise ... from`` so callers catch one root.
"""

from __future__ import annotations


class ScreeningStreamsError(Exception):
    """Root of every error raised on purpose by screening-streams."""


class ConfigError(ScreeningStreamsError):
    """Configuration (policy, keys, settings) is invalid; raised at load time."""


class SchemaError(ScreeningStreamsError):
    """An Avro contract is malformed or breaks a project rule (e.g. a field without a class)."""


class RegistryError(ScreeningStreamsError):
    """The schema registry could not be reached or answered with an error."""


class RegistryUnavailable(RegistryError):
    """The registry did not answer (down, unreachable, timed out, 5xx): infrastructure, retriable.

    Raised out of ``Pipeline.process*`` instead of dead-lettering valid records: the caller
    must not acknowledge the batch, but abort, seek back, back off and process it again.
    """


class LocalStackError(ScreeningStreamsError):
    """The local broker or registry could not be fetched, started or stopped."""


class RecordRejected(ScreeningStreamsError):
    """One input record cannot be processed; it goes to the dead-letter topic.

    ``code`` is a stable machine-readable reason (e.g. ``bad_magic``); the message is a
    human sentence that never contains identifying data.
    """

    def __init__(self, code: str, message: str, stage: str = "decode") -> None:
        super().__init__(message)
        self.code = code
        self.stage = stage
