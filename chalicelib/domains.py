"""Classification (docs/design.md §2): is an e-mail address at a provider used for personal accounts?"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

DEFAULT_LIST = Path(__file__).parent / "data" / "free_email_domains.txt"


def normalise_domain(domain: str) -> str:
    """A domain as compared: trimmed, lower-cased, one trailing dot (the DNS root) dropped."""
    return domain.strip().lower().removesuffix(".")


def email_domain(email: str) -> str:
    """The domain of an address: the text after the last `@`, normalised; "" when there is no `@`."""
    at = email.rfind("@")
    return normalise_domain(email[at + 1 :]) if at >= 0 else ""


@lru_cache(maxsize=1)
def default_personal_domains() -> frozenset[str]:
    """The vendored, maintained free-mail list (see tools/refresh_domains.py), loaded once per process."""
    with DEFAULT_LIST.open(encoding="utf-8") as lines:
        return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def personal_domain_set(
    only: Iterable[str] = (), add: Iterable[str] = (), remove: Iterable[str] = ()
) -> frozenset[str]:
    """The stage's domain set: `only` replaces the default list when given; then `add` and `remove` apply."""
    base = frozenset(only) or default_personal_domains()
    return (base | frozenset(add)) - frozenset(remove)


class EmailClassifier:
    """Decides `is_personal_email` against one fixed domain set."""

    __slots__ = ("_domains",)

    def __init__(self, domains: frozenset[str]) -> None:
        self._domains = domains

    def __len__(self) -> int:
        return len(self._domains)

    def is_personal_email(self, email: str) -> bool:
        """True when the address's domain (or, for an IDN, its ASCII form) is exactly one of the personal domains."""
        domain = email_domain(email)
        if domain in self._domains:
            return True
        return not domain.isascii() and ascii_domain(domain) in self._domains


def ascii_domain(domain: str) -> str:
    """An internationalised domain in the ASCII (punycode) form the list uses; "" if it is not a valid IDN."""
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return ""
