"""Test helpers evalkit offers to plugin authors (importable from their own test suites).

:mod:`evalkit.testing.generator_contract` checks that a model plugs into evalkit correctly:
output format, batch-size independence, fingerprints that follow every setting, and the
harness refusing invalid output.
"""

from evalkit.testing.generator_contract import (
    ContractReport,
    ContractViolation,
    check_batch_independence,
    check_fingerprint,
    check_generator,
    check_invalid_output_refused,
    check_nan_refused,
    check_output_format,
    check_request_identity,
    check_stages,
    contract_requests,
)

__all__ = [
    "ContractReport",
    "ContractViolation",
    "check_batch_independence",
    "check_fingerprint",
    "check_generator",
    "check_invalid_output_refused",
    "check_nan_refused",
    "check_output_format",
    "check_request_identity",
    "check_stages",
    "contract_requests",
]
