"""The webhook signature: walletd's sign(), its verify(), and the README's receiver snippet agree."""

from __future__ import annotations

import re
import time
from pathlib import Path

from walletd.events.delivery import backoff, sign, verify

BODY = b'{"id":"e1","type":"deposit.requested","created_at":"2026-01-01T00:00:00.000000+00:00","data":{}}'


def readme_verifier(secret: str):
    """The `verified` function of the README's worked example, with its SECRET."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "def verified" in b)
    source = block[:block.index("async def hooks")].replace("from aiohttp import web\n", "")
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - the documented snippet itself is under test
    namespace["SECRET"] = secret
    return namespace["verified"]


def test_a_signature_verifies_only_with_its_secret_body_and_a_recent_timestamp():
    now = int(time.time())
    header = sign("whsec_abc", BODY, now)
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    assert verify("whsec_abc", BODY, header)
    assert not verify("whsec_abd", BODY, header)
    assert not verify("whsec_abc", BODY + b" ", header)
    assert not verify("whsec_abc", BODY, sign("whsec_abc", BODY, now - 3600))  # replayed later
    assert not verify("whsec_abc", BODY, "garbage")


def test_the_readme_receiver_accepts_walletd_signatures_and_refuses_others():
    verified = readme_verifier("whsec_readme")
    header = sign("whsec_readme", BODY, int(time.time()))
    assert verified(BODY, header)
    assert not verified(BODY.replace(b"e1", b"e2"), header)
    assert not verified(BODY, sign("whsec_other", BODY, int(time.time())))
    assert not verified(BODY, "") and not verified(BODY, "t=x,v1=y")


def test_backoff_doubles_with_jitter_and_the_first_retry_comes_within_the_base():
    for attempt, base in [(1, 2.0), (2, 2.0), (5, 0.5), (40, 2.0)]:
        full = min(3600.0, base * 2 ** (attempt - 1))
        for _ in range(50):
            assert full / 2 <= backoff(attempt, base) <= full
    assert max(backoff(1, 2.0) for _ in range(50)) <= 2.0
