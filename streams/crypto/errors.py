"""Errors of the encryption layer; none of their messages ever quotes a field value."""

from __future__ import annotations

from streams.errors import ConfigError, ScreeningStreamsError


class CryptoError(ScreeningStreamsError):
    """Root of the encryption layer's errors."""


class KeyFileError(ConfigError, CryptoError):
    """An agency key file or key directory is malformed, unsafe (mode) or inconsistent."""


class KeyUnavailable(CryptoError):
    """The processor has no public key in force for an agency at this instant: nothing is sent.

    Infrastructure, not a bad record: the pipeline lets it propagate (the batch is not
    acknowledged, the worker stops) instead of dead-lettering valid records or sending clear text.
    """


class DecryptionError(CryptoError):
    """An encrypted value does not open: wrong or missing key, tampered, moved, or malformed.

    ``code`` is stable and machine-readable: ``malformed``, ``unknown_data_key``,
    ``no_private_key``, ``unseal_failed``, ``tampered``, ``bad_plaintext``, ``bad_key_record``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
