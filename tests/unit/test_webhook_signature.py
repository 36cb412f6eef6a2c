"""The webhook signature: walletd's sign(), its verify(), and the receiver snippet of
docs/payment-service.md agree."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from pathlib import Path

from walletd.jobs.webhook_delivery import backoff
from walletd.webhooks.signatures import sign, verify

BODY = b'{"id":"e1","type":"deposit.requested","created_at":"2026-01-01T00:00:00.000000+00:00","data":{}}'


def guide_verifier(secret: str):
    """The `verified` function of the payment-service guide's receiver, with its SECRET."""
    guide = (Path(__file__).resolve().parents[2] / "docs" / "payment-service.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", guide, re.S) if "def verified" in b)
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


def test_the_guide_receiver_accepts_walletd_signatures_and_refuses_others():
    verified = guide_verifier("whsec_readme")
    header = sign("whsec_readme", BODY, int(time.time()))
    assert verified(BODY, header)
    assert not verified(BODY.replace(b"e1", b"e2"), header)
    assert not verified(BODY, sign("whsec_other", BODY, int(time.time())))
    assert not verified(BODY, "") and not verified(BODY, "t=x,v1=y")
    # during a rotation's overlap: two signatures, the receiver's secret behind either of them
    now = int(time.time())
    assert verified(BODY, sign("whsec_new", BODY, now, "whsec_readme"))
    assert verified(BODY, sign("whsec_readme", BODY, now, "whsec_old"))
    assert not verified(BODY, sign("whsec_new", BODY, now, "whsec_old"))


def test_backoff_doubles_with_jitter_and_the_first_retry_comes_within_the_base():
    for attempt, base in [(1, 2.0), (2, 2.0), (5, 0.5), (40, 2.0)]:
        full = min(3600.0, base * 2 ** (attempt - 1))
        for _ in range(50):
            assert full / 2 <= backoff(attempt, base) <= full
    assert max(backoff(1, 2.0) for _ in range(50)) <= 2.0


def test_the_signature_matches_a_known_answer_computed_without_walletd():
    """Fixed secret, timestamp and body; the expected hex was computed with OpenSSL, not with
    walletd's code: printf '%s' '1700000000.{"id":"evt_1","type":"deposit.requested"}' |
    openssl dgst -sha256 -hmac 'whsec_known_answer_test' (and likewise for the second secret)."""
    body = b'{"id":"evt_1","type":"deposit.requested"}'
    expected = "t=1700000000,v1=" + KNOWN_ANSWER
    assert sign("whsec_known_answer_test", body, 1700000000) == expected
    assert sign("whsec_known_answer_test", body, 1700000000, "whsec_previous_secret") == \
        expected + ",v1=" + KNOWN_ANSWER_PREVIOUS
    # and the standard library agrees (a second, independent computation)
    assert hmac.new(b"whsec_known_answer_test", b"1700000000." + body, hashlib.sha256).hexdigest() == KNOWN_ANSWER
    assert re.fullmatch(r"[0-9a-f]{64}", KNOWN_ANSWER) and time.time() > 1700000000


KNOWN_ANSWER = "f27e88eb5e392349de568e8f4f7ea741ec415ef2295bfedbf7c7b302ad0e3559"
KNOWN_ANSWER_PREVIOUS = "f819dabe28e8b6f73136afd586876bbec0a81159b0e6294f9c14fd6490281040"
