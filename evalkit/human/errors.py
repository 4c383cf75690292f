"""Errors of the rating service, each with the HTTP status a front end answers with.

Every message is meant for the person who caused it (a rater, an admin or a script),
so it says what was wrong and, where there is one, what to do instead.
"""

from __future__ import annotations

from evalkit.errors import InputError


class RatingError(InputError):
    """A request the rating service refused; nothing was stored."""

    http_status = 400


class BadRequest(RatingError):
    """Malformed or out-of-range input (a choice outside A/B/tie, an oversized field)."""

    http_status = 400


class AuthError(RatingError):
    """No token, an unknown token or a revoked one."""

    http_status = 401


class Forbidden(RatingError):
    """A valid token asking for something it may not do (another rater's task, the admin view)."""

    http_status = 403


class NotFound(RatingError):
    """An unknown study, task or image."""

    http_status = 404


class Conflict(RatingError):
    """A request that clashes with what is stored (task already answered, undo too late)."""

    http_status = 409


class PayloadTooLarge(RatingError):
    """A request body larger than the service accepts."""

    http_status = 413


class RateLimited(RatingError):
    """Too many requests from one token; ``retry_after`` says when to try again (seconds)."""

    http_status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(RatingError):
    """The vote database did not answer in time (restarting, locked); ``retry_after`` in seconds."""

    http_status = 503

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
