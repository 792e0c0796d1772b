"""Typed errors raised by the library; only the CLIs turn them into exit codes.

Exit codes (shared by every tool): 0 ok, 1 runtime failure, 2 usage or config error,
3 bad input file or artifact (a folder from another tool that is missing or malformed).
"""

from __future__ import annotations


class MFTError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\n  fix: {self.fix}"


class ConfigError(MFTError):
    """A flag, YAML key or combination of settings is wrong."""

    exit_code = 2


class InputError(MFTError):
    """An input file has bad content (we name file, line and field)."""

    exit_code = 3


class ContractError(MFTError):
    """An input folder is not what the previous tool should have written (no manifest, wrong kind, ...)."""

    exit_code = 3


class QualityGateError(MFTError):
    """The work ran but its measured result failed a gate the user asked for (merge check, ppl increase)."""

    exit_code = 1
