import pytest

from chalicelib.domains import EmailClassifier, default_personal_domains, email_domain, personal_domain_set
from tools import refresh_domains

DEFAULT = EmailClassifier(personal_domain_set())


@pytest.mark.parametrize(
    ("email", "personal"),
    [
        ("john@gmail.com", True),
        ("john@outlook.com", True),
        ("john@hotmail.com", True),
        ("John@GMAIL.COM", True),
        ("john@gmail.com.", True),
        ("john@ gmail.com ", True),
        ("  john@gmail.com\t", True),
        ("eve@notgmail.com", False),
        ("eve@gmail.com.evil.example", False),
        ("eve@mail.gmail.com", False),
        ("john@example.com", False),
        ("gmail.com", False),
        ("", False),
        ("john@", False),
        ("john@.", False),
        ("a@b@gmail.com", True),
        ("gmail.com@example.com", False),
        ("john@gmail.com..", False),
    ],
)
def test_default_classification(email, personal):
    assert DEFAULT.is_personal_email(email) is personal


def test_domain_is_text_after_last_at_normalised():
    assert email_domain("a@b@Example.COM. ") == "example.com"
    assert email_domain("no-at-sign") == ""


def test_default_list_is_the_maintained_one_and_holds_the_walkthrough_domains():
    domains = default_personal_domains()
    assert {"gmail.com", "outlook.com", "hotmail.com"} <= domains
    assert len(domains) > 10_000
    assert all(d == d.strip().lower() and not d.endswith(".") for d in domains)


def test_vendored_list_matches_the_pinned_npm_package():
    assert refresh_domains.PACKAGE_DIR.is_dir(), "run `make deps` (make test does)"
    text = refresh_domains.render(refresh_domains.package_domains(), refresh_domains.package_version())
    assert refresh_domains.VENDORED.read_text() == text, "stale vendored list: run `make domains`"


def test_stage_can_replace_the_list_with_the_walkthrough_three():
    classifier = EmailClassifier(personal_domain_set(only={"gmail.com", "outlook.com", "hotmail.com"}))
    assert len(classifier) == 3
    assert classifier.is_personal_email("x@outlook.com")
    assert not classifier.is_personal_email("x@yahoo.com")


def test_stage_can_extend_and_trim_the_default_list():
    classifier = EmailClassifier(personal_domain_set(add={"corp-personal.example"}, remove={"gmail.com"}))
    assert classifier.is_personal_email("x@corp-personal.example")
    assert not classifier.is_personal_email("x@gmail.com")
    assert classifier.is_personal_email("x@yahoo.com")


def test_internationalised_domains_match_their_ascii_form():
    classifier = EmailClassifier(personal_domain_set(only={"xn--bcher-kva.de", "xn--d1acpjx3f.xn--p1ai"}))
    assert classifier.is_personal_email("leser@bücher.de")
    assert classifier.is_personal_email("Leser@BÜCHER.DE")
    assert classifier.is_personal_email("пользователь@яндекс.рф")
    assert classifier.is_personal_email("leser@xn--bcher-kva.de")
    assert not classifier.is_personal_email("leser@bucher.de")


def test_lookalike_and_invalid_internationalised_domains_are_not_personal():
    # A dotted capital I lower-cases to "i" plus a combining dot: a different domain from gmail.com.
    assert not DEFAULT.is_personal_email("john@GMAİL.COM")
    assert not DEFAULT.is_personal_email("john@ü..de")
    assert not DEFAULT.is_personal_email("john@" + "ü" * 80 + ".de")
