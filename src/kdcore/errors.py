"""Errors that kdcore raises for bad input; the CLI prints them as one line and exits non-zero."""


class KDCoreError(Exception):
    """Base class of all errors caused by bad input or an impossible request."""


class ConfigError(KDCoreError):
    """A configuration value is unknown, missing or out of range."""


class DataError(KDCoreError):
    """A data source is missing, malformed or inconsistent."""


class CheckpointError(KDCoreError):
    """A checkpoint is missing or does not match what was asked for."""


class TrainingError(KDCoreError):
    """Training cannot go on (non-finite loss, ...)."""
