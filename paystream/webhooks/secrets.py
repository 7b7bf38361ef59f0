"""Signing secrets: generated here, shown once, stored encrypted (Fernet).

The sender signs with the plaintext, so a secret cannot be stored hashed like an API key.
It is encrypted with ``PAYSTREAM_WEBHOOKS__ENCRYPTION_KEY``; ``OLD_ENCRYPTION_KEYS`` still
decrypt, so the key itself can be rotated. Nothing here logs a secret or a key.
"""

from __future__ import annotations

import secrets as _random

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ..config import WebhookSettings

SECRET_PREFIX = "whsec_"


class SecretsUnavailable(RuntimeError):
    """No encryption key is configured (or none decrypts a stored secret)."""


def new_secret() -> str:
    """A fresh signing secret: 256 random bits, URL-safe."""
    return SECRET_PREFIX + _random.token_urlsafe(32)


def new_encryption_key() -> str:
    """A key for ``PAYSTREAM_WEBHOOKS__ENCRYPTION_KEY``."""
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts with the current key, decrypts with it or any old one."""

    def __init__(self, settings: WebhookSettings) -> None:
        keys = [settings.encryption_key, *settings.old_encryption_keys]
        values = [k.get_secret_value() for k in keys if k.get_secret_value()]
        if not settings.encryption_key.get_secret_value():
            self._fernet: MultiFernet | None = None
            return
        try:
            self._fernet = MultiFernet([Fernet(v.encode()) for v in values])
        except ValueError:
            # The message names the setting, never its value.
            raise SecretsUnavailable("PAYSTREAM_WEBHOOKS__ENCRYPTION_KEY (or an old key) is not "
                                     "a Fernet key (urlsafe base64 of 32 bytes)") from None

    @property
    def configured(self) -> bool:
        return self._fernet is not None

    def _require(self) -> MultiFernet:
        if self._fernet is None:
            raise SecretsUnavailable("PAYSTREAM_WEBHOOKS__ENCRYPTION_KEY is not set")
        return self._fernet

    def encrypt(self, secret: str) -> bytes:
        return self._require().encrypt(secret.encode())

    def decrypt(self, ciphertext: bytes) -> str:
        try:
            return self._require().decrypt(ciphertext).decode()
        except InvalidToken:
            raise SecretsUnavailable("a stored webhook secret does not decrypt with the "
                                     "configured keys") from None


__all__ = ["SECRET_PREFIX", "SecretBox", "SecretsUnavailable", "new_encryption_key",
           "new_secret"]
