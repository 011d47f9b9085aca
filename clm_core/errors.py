"""Every exception CLM raises on purpose.

    ClmError
    ├── ConfigError               bad or missing settings, unknown provider, missing secret
    ├── DatabaseError             schema, migration or connection trouble
    ├── DataImportError           a fatal import problem: nothing was imported
    ├── InputError                a command's argument is invalid or names nothing that exists
    ├── SpecError                 a marketer's file (stage rules, journey, template) is invalid;
    │                             carries every problem found, each with file:line:column
    ├── ModelFitError             a CLV model did not converge or cannot be fitted
    │   └── NotEnoughHistoryError     too few customers or repeat buyers to fit yet
    ├── TemplateRenderError       a template failed to render (undefined variable, sandbox)
    ├── TokenError                a signed token (unsubscribe, preferences, click) is malformed,
    │                             altered, expired or signed with a key this service does not hold
    ├── ConsentError              a consent change names an unknown channel, action or source
    ├── CallbackError             a provider callback cannot be used (answered 400)
    │   └── SignatureError        its signature is missing or wrong (answered 401)
    └── ProviderError             a provider refuses every send for now (revoked key, balance):
        │                         the channel stopped, its messages wait
        └── ThrottleError         no slot of the shared rate limit could be taken (the limit
                                  is missing or the orchestrator refused): nothing was sent

Per-message provider outcomes (sent, transient, permanent, rejected) are not exceptions: an
adapter returns them as ``clm_core.delivery.model.SendResult`` for every message in a batch.

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


class ModelConvergenceError(ModelFitError):
    """The optimiser gave up or ended on invalid parameters (the data was enough to try); a
    small penalizer usually settles it (``fitting.fit_models`` tries that on its own)."""


class NotEnoughHistoryError(ModelFitError):
    """The store has too few customers or repeat buyers for a fit; scoring goes on without
    the models (``lifecycle.history``)."""


class TemplateRenderError(ClmError):
    """A template could not be rendered for a customer."""


class TokenError(ClmError):
    """A signed token (unsubscribe, preferences or click link) failed verification."""


class ConsentError(ClmError):
    """A consent change that the ledger cannot record as given (unknown channel, action, source)."""


class CallbackError(ClmError):
    """A provider callback is malformed; nothing of it is stored."""


class SignatureError(CallbackError):
    """A provider callback's signature (or path token) is missing or does not verify."""


class ProviderError(ClmError):
    """Sending stopped because a provider refuses every request for now."""


class ThrottleError(ProviderError):
    """A slot of a shared provider rate limit could not be taken; nothing was sent."""
