"""What a caller's organisation lets it reach: the one organisation rule (DESIGN §7, §8).

Every client belongs to one organisation and acts for it alone, admins included: an
organisation's admin manages its own organisation's clients, services, clinical route,
subscriptions and deliveries, and nothing of another's. The bootstrap admin key
(``Principal.sees_everything``) is the only caller that acts across organisations.

Services ask here rather than compare organisations themselves:

- :func:`scoped` / :func:`owned_by` give the query condition (None: no condition, every row);
- :func:`require_found` answers 404 for an object of another organisation, as for one that does
  not exist (existence is not revealed);
- :func:`require_own` answers 403 for a create or change that names another organisation (the
  caller named it, so nothing is revealed by saying no).

Which referrals and cases an organisation sees is built on :func:`scoped` in
``app.cases.visibility``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, false

from app.errors import Forbidden, NotFound
from app.security.auth import Principal
from app.security.roles import Role

Query = TypeVar("Query", bound="Select[*tuple[Any, ...]]")


def installation(name: str) -> Principal:
    """The installation itself, as the bootstrap admin is (every organisation): for the operator's
    command line and the metrics, which run with no client."""
    return Principal(client_id=None, name=name, role=Role.ADMIN, organisation=None)


def acting_for(principal: Principal) -> str | None:
    """The organisation the caller acts for; None for the bootstrap admin, who acts for all."""
    return None if principal.sees_everything else principal.organisation


def owns(principal: Principal, organisation: str | None) -> bool:
    """Whether the caller may act on something of ``organisation`` (None: the installation's)."""
    if principal.sees_everything:
        return True
    return organisation is not None and organisation == principal.organisation


def scoped(
    principal: Principal, rule: Callable[[str], ColumnElement[bool]]
) -> ColumnElement[bool] | None:
    """``rule`` applied to the caller's organisation: the rows it may reach. None when the caller
    sees every organisation (no condition to add)."""
    if principal.sees_everything:
        return None
    if principal.organisation is None:
        # Not a state a client record can produce (every client has an organisation), but a
        # principal without one must reach nothing rather than everything.
        return false()
    return rule(principal.organisation)


def owned_by(principal: Principal, column: Any) -> ColumnElement[bool] | None:
    """Rows whose ``column`` names the caller's organisation; None: every row."""
    return scoped(principal, lambda organisation: column == organisation)


def restrict(query: Query, condition: ColumnElement[bool] | None) -> Query:
    """``query`` limited to the rows ``condition`` (from here) allows; None leaves it whole."""
    return query if condition is None else query.where(condition)


def require_found(principal: Principal, organisation: str | None, message: str) -> None:
    """404 (``message``) unless the object, of ``organisation``, is the caller's to reach."""
    if not owns(principal, organisation):
        raise NotFound(message)


def require_own(principal: Principal, organisation: str, *, expression: str) -> None:
    """403 when a create or change names an organisation the caller does not act for."""
    if not owns(principal, organisation):
        raise Forbidden(
            f"{expression} must be your own organisation: an organisation's clients manage "
            "only their own organisation's clients, services and routes",
            expression=expression,
        )


def may_refer_for(principal: Principal, ods_code: str) -> bool:
    """Whether the caller may send a referral whose requester is ``ods_code``: its own
    organisation, or one the installation's admin named for it (``ApiClient.acts_for``)."""
    return ods_code == principal.organisation or ods_code in principal.acts_for
