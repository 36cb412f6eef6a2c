"""TokenIssuer: HS256 JWTs with sub, role, iat, exp; everything else is refused with TokenError."""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walletd.auth.tokens import Principal, TokenError, TokenIssuer

SECRET = "unit-secret-" + "z" * 64
issuer = TokenIssuer(SECRET, 3600)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(claims: dict, secret: str = SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short keys for the larger HMACs are the point of some tests
        return jwt.encode(claims, secret, algorithm=algorithm)


def good_claims(**overrides) -> dict:
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "role": "user", "iat": now, "exp": now + 60}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize("role", ["user", "service"])
def test_round_trip(role):
    user_id = uuid.uuid4()
    token = issuer.issue(user_id, role)
    assert isinstance(token, str) and token.count(".") == 2
    assert issuer.verify(token) == Principal(user_id, role)


def test_claims_carry_role_and_expiry():
    before = int(time.time())
    user_id = uuid.uuid4()
    token = TokenIssuer(SECRET, 120).issue(user_id, "service")
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(user_id) and claims["role"] == "service"
    assert before <= claims["iat"] <= before + 2
    assert claims["exp"] - claims["iat"] == 120


def test_issued_tokens_differ_per_user_and_role():
    a, b = uuid.uuid4(), uuid.uuid4()
    assert len({issuer.issue(a, "user"), issuer.issue(b, "user"), issuer.issue(a, "service")}) == 3


def test_expired_token_is_refused():
    expired = TokenIssuer(SECRET, -1).issue(uuid.uuid4(), "user")
    with pytest.raises(TokenError):
        issuer.verify(expired)
    now = int(time.time())
    with pytest.raises(TokenError):
        issuer.verify(sign(good_claims(iat=now - 100, exp=now - 1)))


def test_a_token_still_within_its_lifetime_is_accepted():
    now = int(time.time())
    user_id = uuid.uuid4()
    assert issuer.verify(sign(good_claims(sub=str(user_id), iat=now - 3000, exp=now + 5))) == Principal(user_id, "user")


def test_other_secret_is_refused():
    token = TokenIssuer("another-secret-" + "q" * 64, 3600).issue(uuid.uuid4(), "user")
    with pytest.raises(TokenError):
        issuer.verify(token)


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_algorithms_with_the_right_secret_are_refused(algorithm):
    with pytest.raises(TokenError):
        issuer.verify(sign(good_claims(), algorithm=algorithm))


def test_alg_none_is_refused():
    body = b64url(json.dumps(good_claims()).encode())
    for alg in ("none", "None", "NONE"):
        header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        for token in (f"{header}.{body}.", f"{header}.{body}"):
            with pytest.raises(TokenError):
                issuer.verify(token)


def test_tampered_payload_is_refused():
    token = issuer.issue(uuid.uuid4(), "user")
    header, _, signature = token.split(".")
    escalated = b64url(json.dumps(good_claims(role="service")).encode())
    with pytest.raises(TokenError):
        issuer.verify(f"{header}.{escalated}.{signature}")
    with pytest.raises(TokenError):
        issuer.verify(token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))


@pytest.mark.parametrize("missing", ["sub", "role", "iat", "exp"])
def test_every_claim_is_required(missing):
    with pytest.raises(TokenError):
        issuer.verify(sign({k: v for k, v in good_claims().items() if k != missing}))


@pytest.mark.parametrize("overrides", [
    {"role": "admin"}, {"role": "operator"}, {"role": ""}, {"role": ["user"]},
    {"sub": "not-a-uuid"}, {"sub": ""}, {"sub": 12345}, {"exp": "tomorrow"},
])
def test_bad_claim_values_are_refused(overrides):
    with pytest.raises(TokenError):
        issuer.verify(sign(good_claims(**overrides)))


@pytest.mark.parametrize("garbage", ["", " ", "abc", "a.b.c", "a.b", "....", "eyJ.eyJ.eyJ", "Bearer x",
                                     "\x00", "é.é.é", "a" * 10_000])
def test_garbage_is_refused(garbage):
    with pytest.raises(TokenError):
        issuer.verify(garbage)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_only_ever_raises_token_error(text):
    with pytest.raises(TokenError):
        issuer.verify(text)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["sub", "role", "iat", "exp", "nbf", "aud"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=40), st.booleans(),
                                 st.lists(st.integers(), max_size=2))))
def test_arbitrary_signed_claims_verify_or_raise_token_error(claims):
    try:
        principal = issuer.verify(sign(claims))
    except TokenError:
        return
    # Whatever got through is a well-formed principal from well-formed claims.
    assert isinstance(principal.user_id, uuid.UUID) and principal.role in ("user", "service")
    assert claims["role"] == principal.role and claims["exp"] > time.time()


def test_a_verified_token_is_refused_once_it_expires():
    """Verification may be cached, but never past the token's own expiry."""
    local = TokenIssuer(SECRET, 3600)
    user_id = uuid.uuid4()
    exp = int(time.time()) + 1
    token = sign(good_claims(sub=str(user_id), iat=exp - 60, exp=exp))
    assert local.verify(token) == Principal(user_id, "user")
    assert local.verify(token) == Principal(user_id, "user")  # again, possibly from a cache
    time.sleep(max(0.0, exp - time.time()) + 0.05)  # this test is about time: the token must really expire
    with pytest.raises(TokenError):
        local.verify(token)
    with pytest.raises(TokenError):
        local.verify(token)


def test_many_tokens_verify_correctly_past_any_cache_bound():
    local = TokenIssuer(SECRET, 3600)
    ids = [uuid.uuid4() for _ in range(50)]
    tokens = [local.issue(i, "user" if n % 2 else "service") for n, i in enumerate(ids)]
    for _ in range(2):
        for n, (user_id, token) in enumerate(zip(ids, tokens, strict=False)):
            assert local.verify(token) == Principal(user_id, "user" if n % 2 else "service")
