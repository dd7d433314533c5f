"""Raw-quotes validation with Great Expectations 1.x (suite: include/gx/atft_quotes.json).

Public API: :func:`validate_quotes`, :func:`ensure_valid`, :class:`ValidationReport`,
:class:`CheckResult`, :class:`DataValidationError`, :class:`UnreadableInputError`,
:class:`DocsDirError`.
GX is imported only when a validation runs (it takes seconds to import).
"""

from atft_core.validation.report import CheckResult, ValidationReport
from atft_core.validation.runner import DocsDirError, ensure_valid, validate_quotes
from atft_core.validation.source import DataValidationError, UnreadableInputError, read_quotes

__all__ = [
    "CheckResult", "DataValidationError", "DocsDirError", "UnreadableInputError", "ValidationReport",
    "ensure_valid", "read_quotes", "validate_quotes",
]
