"""The docs an operator reads are checked like code: links and anchors resolve, the paths they
name exist, the error codes they name are ones walletd answers, the generated references are
what their generators write, every setting walletd reads is documented, every figure says what
measured it, and the README stays an entry point that links every page."""

from __future__ import annotations

import ast
import dataclasses
import re
import unicodedata
from pathlib import Path

import pytest

from walletd.config import Settings
from walletd.config_catalogue import END, SETTINGS, START, markdown_tables
from walletd.domain import errors as domain_errors
from walletd.handlers import errors_doc
from walletd.handlers.errors import catalogue

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO / "README.md", REPO / "CHANGELOG.md", *(REPO / "docs").glob("*.md")])
README_MAX_WORDS = 2000
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks (a link inside one is an example, not a link)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def relative_links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", prose(path.read_text()))
    return [target for target in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(doc: Path):
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{doc.name}: {broken}"


REPO_PATH = re.compile(r"^(?:walletd|tests|bench|deploy|docs|\.ci)/[\w./-]*$")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_repository_path_a_doc_names_exists(doc: Path):
    """A path in backticks (`walletd/persistence/ledger.py`, `deploy/grafana/`) is a promise that
    the reader will find it."""
    missing = [span for _, span in INLINE_CODE.findall(doc.read_text())
               if REPO_PATH.match(span) and not (REPO / span).exists()]
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


CODES = {code for code, _, _ in catalogue()}
PAIRS = {(code, status) for code, status, _ in catalogue()}
# A status followed by a code: "409 `rate_arbitrage`", "(400 `invalid_amount`, ...", and codes that
# continue the list: ", `service_wallet_not_found`", "or `wallet_not_found`".
STATUS_THEN_CODE = re.compile(r"\b([1-5]\d\d)\)?\s+(?:\+\s*`Retry-After`\s*)?`([a-z][a-z0-9_]*)`")
CONTINUED = re.compile(r"(?:\s*\([^()]*\))?\s*,?\s*(?:or\s+|and\s+)?`([a-z][a-z0-9_]*)`")
JSON_CODE = re.compile(r'"code"\s*:\s*"([a-z][a-z0-9_]*)"')
# What walletd's errors answer in `message` but never in `code` (the original service's texts).
MESSAGES_NOT_CODES = {cls.message for cls in vars(domain_errors).values()
                      if isinstance(cls, type) and issubclass(cls, domain_errors.DomainError)
                      and cls.message not in CODES and re.fullmatch(r"[a-z][a-z0-9_]*", cls.message)}


def named_codes(text: str) -> list[tuple[str, int | None, str]]:
    """(code, status or None, context) for every error code the text names as one."""
    found = []
    for match in STATUS_THEN_CODE.finditer(text):
        status = int(match.group(1))
        if status < 400:
            continue
        found.append((match.group(2), status, match.group(0)))
        position = match.end()
        while (more := CONTINUED.match(text, position)) and "\n\n" not in more.group(0):
            found.append((more.group(1), status, more.group(0)))
            position = more.end()
    found += [(code, None, f'"code": "{code}"') for code in JSON_CODE.findall(text)]
    return found


def test_the_code_finder_sees_what_a_doc_names():
    text = ('400 `insufficient_funds`, `user_ext_wallet_not_found` (create one first), `service_wallet_not_found`'
            '; 409 `external_wallet_already_exists`. 503 + `Retry-After` `unavailable`. {"code": "legs_refused"}')
    assert [(c, s) for c, s, _ in named_codes(text)] == [
        ("insufficient_funds", 400), ("user_ext_wallet_not_found", 400), ("service_wallet_not_found", 400),
        ("external_wallet_already_exists", 409), ("unavailable", 503), ("legs_refused", None)]
    assert {"user_ext_wallet_not_found", "external_wallet_already_exists", "invalid_type_transaction"} <= \
        MESSAGES_NOT_CODES


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_error_code_a_doc_names_is_one_walletd_answers(doc: Path):
    text = doc.read_text()
    wrong = [f"{context!r}: no code {code}" + (f" with status {status}" if status and code in CODES else "")
             for code, status, context in named_codes(text)
             if code not in CODES or (status is not None and (code, status) not in PAIRS)]
    # The original's message texts look like codes; naming one as such is the mistake to catch
    # (docs/errors.md lists them in their own column, generated from the code).
    spans = [] if doc.name == "errors.md" else [span for _, span in INLINE_CODE.findall(text)]
    for span in (span for span in spans if span in MESSAGES_NOT_CODES):
        before = text[:text.index(f"`{span}`")][-120:]
        if "message" not in before:
            wrong.append(f"`{span}` is a message text, not a code")
    assert not wrong, f"{doc.name}: {wrong}"


def test_every_code_in_the_table_is_answered_somewhere():
    routes, _ = errors_doc.routes_by_code()
    unanswered = [(code, status) for code, status, _ in catalogue()
                  if (code, status) not in routes and code not in errors_doc.pre_route_codes()]
    assert not unanswered, f"codes no route declares and nothing answers before routing: {unanswered}"


def test_the_error_reference_is_what_its_generator_writes():
    assert (REPO / "docs" / "errors.md").read_text() == errors_doc.render(), \
        "docs/errors.md is stale: run `python -m walletd.handlers.errors_doc`"


def test_the_settings_tables_are_what_their_generator_writes():
    text = (REPO / "docs" / "configuration.md").read_text()
    assert START in text and END in text
    assert text.split(START, 1)[1].split(END, 1)[0] == markdown_tables(), \
        "docs/configuration.md is stale: run `python -m walletd.config_catalogue`"


def _environment_names_read_by_walletd() -> set[str]:
    names = set()
    for path in (REPO / "walletd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    re.fullmatch(r"WALLETD_[A-Z_]+|DATABASE_URL|PROMETHEUS_MULTIPROC_DIR", node.value):
                names.add(node.value)
    return names


def test_every_setting_walletd_reads_is_in_the_catalogue():
    listed = {setting.name for setting in SETTINGS}
    assert len(listed) == len(SETTINGS), "a setting is listed twice"
    assert _environment_names_read_by_walletd() <= listed, _environment_names_read_by_walletd() - listed
    fields = {field.name for field in dataclasses.fields(Settings)}
    assert {s.field for s in SETTINGS if s.field} == fields, "every Settings field is one listed setting"
    for setting in SETTINGS:
        assert setting.help and setting.help == setting.help.strip(), setting.name


# A paragraph that reports a measurement names the committed script that produced it, or says it
# was a one-off measurement by hand and when.
MEASURED = re.compile(r"\bmeasur(?:ed|es|ing)\b", re.I)
SCRIPT = re.compile(r"`(?:make [a-z-]+|python -m [\w.]+|tests/[\w/.-]+|bench/[\w/.-]+|\.venv/bin/python)[^`]*`")
BY_HAND = re.compile(r"by hand[^.]*?\b20\d\d-\d\d-\d\d\b|\b20\d\d-\d\d-\d\d\b[^.]*?by hand|hand measurements?, 20\d\d-\d\d-\d\d")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_measured_figure_names_its_script_or_is_marked_by_hand(doc: Path):
    unbacked = []
    for paragraph in re.split(r"\n\s*\n", prose(doc.read_text())):
        if MEASURED.search(paragraph) and re.search(r"\d", paragraph) and \
                not SCRIPT.search(paragraph) and not BY_HAND.search(paragraph):
            unbacked.append(paragraph.strip()[:160])
    assert not unbacked, f"{doc.name}: figures with no script and no date of a hand measurement: {unbacked}"


def test_the_readme_is_an_entry_point_that_links_every_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.split()) <= README_MAX_WORDS, f"README.md has {len(readme.split())} words"
    linked = {(REPO / target.partition("#")[0]).resolve() for target in relative_links(REPO / "README.md")}
    unlinked = [path.name for path in DOCS if path.name != "README.md" and path.resolve() not in linked]
    assert not unlinked, f"README.md links no {unlinked}"


def test_slugs_match_githubs():
    assert slug("What an answer means") == "what-an-answer-means"
    assert slug("### `POST /auth/register`".lstrip("# ")) == "post-authregister"
    assert slug("Runbook: rotating the JWT secret") == "runbook-rotating-the-jwt-secret"
    assert slug("2. Receive webhooks") == "2-receive-webhooks"
    assert slug("How `make test-docker` proves it (`tests/docker/run.sh`)") == \
        "how-make-test-docker-proves-it-testsdockerrunsh"
