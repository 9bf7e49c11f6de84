"""Errors raised by the data layer (all name the file or places involved)."""

from __future__ import annotations


class DataNotFoundError(FileNotFoundError):
    """A dataset's files were not found; the message lists every place looked in and how to get them."""


class DataFormatError(ValueError):
    """A dataset file exists but is corrupt, truncated or not in the expected format."""


class ChecksumError(DataFormatError):
    """A downloaded file's checksum does not match the published one (the file is not kept)."""
