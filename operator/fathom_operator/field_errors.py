"""The error every recipe check reports: a field path a user can point at and what was expected.

Separate from `validate` so the YAML limits, the format checks and the spec checks can all report
with it without importing one another. Messages are redacted (`fathom_jobs.redact`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fathom_jobs.redact import redact


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __post_init__(self) -> None:  # user input is quoted in messages: never a credential
        object.__setattr__(self, "path", redact(self.path)[:500])
        object.__setattr__(self, "message", redact(self.message)[:2000])

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class RecipeInvalid(Exception):
    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("\n".join(map(str, errors)))


def shown(value: Any, limit: int = 120) -> str:
    """A user's value quoted in a message: repr, cut short (a 1 MB prompt is not echoed back)."""
    text = repr(value) if not isinstance(value, str) or len(value) <= limit else repr(value[:limit]) + "..."
    return text if len(text) <= limit + 10 else text[:limit] + "..."

