"""One exception type for every problem a user can fix; the CLI prints its message as a single line."""

from __future__ import annotations


class CircuitsError(Exception):
    """A user-facing error: the message names what was wrong and what to do about it."""


class ModelLoadError(CircuitsError):
    """A model could not be loaded (unknown name, missing or corrupt files, offline hub)."""


class DictionaryLoadError(CircuitsError):
    """A dictionary file is missing, truncated, foreign, inconsistent or does not fit the model."""


class AttributionError(CircuitsError):
    """Bad input to the replacement model or to attribution (empty prompt, too long, unknown token, ...)."""


class ConfigError(CircuitsError, ValueError):
    """An invalid option value in a typed config (also a ValueError, for callers that catch that)."""


class CheckpointError(CircuitsError):
    """A checkpoint that cannot be read or does not match the run that wants to resume from it."""


class OutputPathError(CircuitsError):
    """An output path that cannot be written (checked before any expensive work)."""
