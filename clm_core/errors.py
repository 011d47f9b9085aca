"""Every exception CLM raises on purpose.

    ClmError
    ├── ConfigError               bad or missing settings, unknown provider, missing secret
    ├── DatabaseError             schema, migration or connection trouble
    ├── DataImportError           a fatal import problem: nothing was imported
    ├── InputError                a command's argument is invalid or names nothing that exists
    ├── SpecError                 a marketer's file (stage rules, journey, template) is invalid;
    │                             carries every problem found, each with file:line:column
    ├── ModelFitError             a CLV model did not converge or cannot be fitted
    ├── TemplateRenderError       a template failed to render (undefined variable, sandbox)
    ├── TokenError                an unsubscribe token is malformed, altered or foreign
    └── ProviderError             a provider call failed; raised from the transport error
        ├── TransientProviderError    retry later (timeouts, 429, 5xx); may carry retry_after
        └── PermanentProviderError    never retry this message
            └── RecipientRejectedError  opted out or invalid: the address is suppressed

Errors from libraries are translated at the boundary with ``raise ... from exc`` so callers
only need to know this tree. Messages say what went wrong and where, and never carry secrets.
"""

from __future__ import annotations

from dataclasses import dataclass


class ClmError(Exception):
    """Base of every deliberate CLM error."""


class ConfigError(ClmError):
    """Settings are missing or invalid."""


class DatabaseError(ClmError):
    """The database cannot be reached, migrated or used as expected."""


class DataImportError(ClmError):
    """An import cannot go on at all (unreadable file, missing required column)."""


class InputError(ClmError):
    """An argument a person gave is invalid or names nothing that exists (a customer, points)."""


@dataclass(frozen=True)
class Problem:
    """One finding in a marketer's file, with its location."""

    file: str
    line: int | None
    column: int | None
    message: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.severity}: {self.message}"


class SpecError(ClmError):
    """One or more problems in stage rules, journeys or templates."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ModelFitError(ClmError):
    """A model could not be fitted; the message says what to try."""


class TemplateRenderError(ClmError):
    """A template could not be rendered for a customer."""


class TokenError(ClmError):
    """A signed token (unsubscribe link) failed verification."""


class ProviderError(ClmError):
    """A provider call did not succeed."""

    def __init__(self, message: str, *, code: str | None = None):
        self.code = code
        super().__init__(message)


class TransientProviderError(ProviderError):
    """Worth retrying later; ``retry_after`` is in seconds when the provider said."""

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message, code=code)


class PermanentProviderError(ProviderError):
    """Retrying will not help."""


class RecipientRejectedError(PermanentProviderError):
    """The recipient opted out or the address is invalid: suppress it."""
