"""The keys walletd keeps outside the database, all from WALLETD_SECRETS_KEY (docs/security.md).

WALLETD_SECRETS_KEY is one Fernet key, or several separated by commas during a rotation: the
first encrypts, every one decrypts. Three keys are derived from the first with HKDF, one per
purpose, so no use can be turned into another:
- webhook secrets are stored as Fernet tokens (AES-128-CBC + HMAC-SHA256): a database dump,
  backup or replica holds nothing that signs a delivery;
- a typed username is stored and logged as an HMAC-SHA256 pseudonym: without the key, a
  dictionary of likely names (or of passwords typed into the name field) recovers nothing;
- history cursors are sealed with AES-SIV, bound to the list they page: they reveal no sequence
  number (so nothing of anyone else's traffic) and cannot be forged or moved to another list.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from walletd.config import secrets_keys


def new_secrets_key() -> str:
    """32 random bytes, URL-safe base64: what WALLETD_SECRETS_KEY holds."""
    return Fernet.generate_key().decode()


def _derive(master: bytes, purpose: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=b"walletd " + purpose).derive(master)


class SecretUnreadable(Exception):
    """A stored secret that none of the configured keys decrypts (a key was dropped too early)."""


class ServerKeys:
    def __init__(self, raw: str | None) -> None:
        names = secrets_keys(raw)
        fernets = [Fernet(name.encode()) for name in names]
        self._primary = fernets[0]
        self._all = MultiFernet(fernets)
        master = base64.urlsafe_b64decode(names[0])
        self._username_key = _derive(master, b"username pseudonym", 32)
        self._cursor = AESSIV(_derive(master, b"history cursor", 64))

    # ---- webhook secrets ------------------------------------------------------------------------

    def encrypt(self, secret: str) -> str:
        return self._primary.encrypt(secret.encode()).decode()

    def decrypt(self, stored: str) -> str:
        try:
            return self._all.decrypt(stored.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable() from None

    def under_primary(self, stored: str) -> bool:
        try:
            self._primary.decrypt(stored.encode())
        except InvalidToken:
            return False
        return True

    def rewrap(self, stored: str) -> str:
        """The same secret under the first key (after a rotation of WALLETD_SECRETS_KEY)."""
        try:
            return self._all.rotate(stored.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable() from None

    # ---- usernames --------------------------------------------------------------------------------

    def pseudonym(self, username: str) -> str:
        """What is stored and logged instead of a typed username (people type passwords there)."""
        digest = hmac.new(self._username_key, username.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return digest.hexdigest()[:32]

    # ---- cursors ----------------------------------------------------------------------------------

    def seal_cursor(self, scope: bytes, position: int) -> str:
        return self.seal_bytes(scope, position.to_bytes(8, "big"))

    def open_cursor(self, scope: bytes, cursor: str) -> int | None:
        """The position sealed in a cursor issued for this scope; None for anything else."""
        payload = self.open_bytes(scope, cursor)
        return None if payload is None else int.from_bytes(payload, "big")

    def seal_bytes(self, scope: bytes, payload: bytes) -> str:
        """A cursor carrying more than a position (a statement's: its period, balances and place)."""
        return base64.urlsafe_b64encode(self._cursor.encrypt(payload, [scope])).rstrip(b"=").decode()

    def open_bytes(self, scope: bytes, cursor: str, longest: int = 64) -> bytes | None:
        """What seal_bytes sealed for this scope; None for anything else."""
        if not 0 < len(cursor) <= longest or not cursor.isascii():
            return None
        try:
            return self._cursor.decrypt(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), [scope])
        except (ValueError, binascii.Error, InvalidTag):
            return None
