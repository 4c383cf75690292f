"""Error types with the process exit code each one maps to.

Every error message names the file or field at fault and what is wrong, so the
command line can print it as is (no traceback) and exit with a meaningful code.
"""

from __future__ import annotations


class EvalkitError(Exception):
    """Base class of every error evalkit reports to a user."""

    exit_code = 1


class UsageError(EvalkitError):
    """Bad command-line arguments or options (unknown names, bad values)."""

    exit_code = 2


class InputError(EvalkitError):
    """Bad input data: a corrupt image, a malformed prompt file, a COCO folder missing files."""

    exit_code = 3


class MissingWeightsError(EvalkitError):
    """Weights or data that must be fetched first; the message names the command that fixes it."""

    exit_code = 4


class ProtocolMismatchError(EvalkitError):
    """Two results (or a result and cached statistics) measured under different protocols."""

    exit_code = 5


class GenerationError(EvalkitError):
    """A generator produced invalid output (NaN, wrong shape or range)."""

    exit_code = 6


class RegressionError(EvalkitError):
    """The CI gate found a metric significantly worse than the baseline, beyond the allowed amount."""

    exit_code = 10


class UndecidedError(EvalkitError):
    """The CI gate cannot decide: too few samples, or missing per-item scores or features."""

    exit_code = 11
