"""Errors raised by the mechanisms library.

Every error is a ``ValueError`` so callers that only know the standard library still catch it;
the service maps the whole family to one ``invalid_request`` response.
"""

from __future__ import annotations


class MechanismError(ValueError):
    """Base class: a query or mechanism was asked for something it cannot do safely."""


class InvalidPrivacyParameter(MechanismError):
    """ε, δ, a sensitivity or a contribution bound is missing, non-finite or out of range."""


class InvalidDomain(MechanismError):
    """Public bounds, bins, categories, a quantile level or the data do not fit the query."""
