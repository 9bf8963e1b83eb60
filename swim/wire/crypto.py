"""AES-GCM payload encryption and the keyring of memberlist 0.2.2 (``security.go``, ``keyring.go``).

An encrypted payload is ``[version][12-byte nonce][ciphertext || 16-byte tag]``.  Version 0
PKCS7-pads the plaintext to 16 bytes first; version 1 does not.  We send version 1 (what Serf
sends) and accept both.  Keyring files use Serf's format: a JSON array of base64 keys, primary
first, mode 0600.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from swim.wire.errors import DecodeError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENCRYPTION_VERSION",
    "Keyring",
    "KeyringError",
    "decode_key",
    "encode_key",
    "encrypted_length",
    "nonce_of",
]

ENCRYPTION_VERSION = 1
"""The version we encrypt with; memberlist sends 1 for every protocol version Serf uses."""

_VERSION_SIZE = 1
_NONCE_SIZE = 12
_TAG_SIZE = 16
_BLOCK_SIZE = 16
_KEY_SIZES = (16, 24, 32)

_Bytes = bytes | bytearray | memoryview


class KeyringError(ValueError):
    """A key or keyring given by the user is unusable; the message names the cause and the fix."""


def encrypted_length(version: int, plaintext_len: int) -> int:
    """Size of the payload sealing ``plaintext_len`` bytes (memberlist's ``encryptedLength``)."""
    if version not in (0, 1):
        raise ValueError(f"unknown encryption version {version}; memberlist knows 0 and 1")
    if plaintext_len < 0:
        raise ValueError(f"plaintext length must not be negative, got {plaintext_len}")
    padding = _BLOCK_SIZE - plaintext_len % _BLOCK_SIZE if version == 0 else 0
    return _VERSION_SIZE + _NONCE_SIZE + plaintext_len + padding + _TAG_SIZE


def nonce_of(payload: bytes) -> bytes:
    """The nonce of a payload that :meth:`Keyring.decrypt` accepted."""
    return payload[_VERSION_SIZE : _VERSION_SIZE + _NONCE_SIZE]


def _validate_key(key: _Bytes) -> bytes:
    """Return ``key`` as bytes if it is a valid AES key, else raise :class:`KeyringError`."""
    if not isinstance(key, _Bytes):
        raise KeyringError(f"a key must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) not in _KEY_SIZES:
        raise KeyringError(
            f"key is {len(key)} bytes; an AES key must be 16, 24 or 32 bytes "
            "(AES-128, AES-192 or AES-256)"
        )
    return key


def _default_nonce() -> bytes:
    return os.urandom(_NONCE_SIZE)


class Keyring:
    """The installed keys: the primary (first) encrypts, every key is tried to decrypt.

    ``nonce_source`` supplies each 12-byte nonce (default: ``os.urandom``); a simulator can
    replace it to make ciphertexts reproducible.  Never reuse a nonce with a real key.
    """

    def __init__(
        self, keys: Iterable[_Bytes], nonce_source: Callable[[], bytes] | None = None
    ) -> None:
        # cryptography is imported by the first keyring, not with this module: a node without
        # a key never loads it, which keeps about 8 MiB out of an unencrypted agent.
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

        self._cipher_of = AESGCM
        self._invalid_tag = InvalidTag
        self._nonce_source = nonce_source or _default_nonce
        # (key, cipher) pairs, primary first; replaced whole on every change.
        self._ciphers: tuple[tuple[bytes, AESGCM], ...] = ()
        if isinstance(keys, _Bytes):
            raise KeyringError("keys must be a list of keys; wrap a single key as Keyring([key])")
        for key in keys:
            self.add_key(key)
        if not self._ciphers:
            raise KeyringError(
                "a keyring needs at least one key; pass a 16, 24 or 32-byte key "
                "(for example one made by `serf keygen`)"
            )

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The installed keys, primary first."""
        return tuple(key for key, _ in self._ciphers)

    @property
    def primary_key(self) -> bytes:
        """The key used to encrypt."""
        return self._ciphers[0][0]

    def add_key(self, key: _Bytes) -> None:
        """Install ``key`` for decryption; a no-op if already installed.  The primary is kept."""
        key = _validate_key(key)
        if key not in self.keys:
            self._ciphers = (*self._ciphers, (key, self._cipher_of(key)))

    def use_key(self, key: _Bytes) -> None:
        """Make the installed ``key`` the primary, so it encrypts from now on."""
        entry = self._find(key, "use")
        self._ciphers = (entry, *(e for e in self._ciphers if e is not entry))

    def remove_key(self, key: _Bytes) -> None:
        """Uninstall ``key``; the primary cannot be removed."""
        entry = self._find(key, "remove")
        if entry is self._ciphers[0]:
            raise KeyringError(
                "cannot remove the primary key; make another key primary with use_key() first"
            )
        self._ciphers = tuple(e for e in self._ciphers if e is not entry)

    def _find(self, key: _Bytes, action: str) -> tuple[bytes, AESGCM]:
        key = _validate_key(key)
        for entry in self._ciphers:
            if entry[0] == key:
                return entry
        raise KeyringError(f"cannot {action} a key that is not installed; add_key() it first")

    def encrypt(self, plaintext: _Bytes, aad: _Bytes = b"") -> bytes:
        """Seal ``plaintext`` with the primary key as a version 1 payload bound to ``aad``."""
        nonce = self._nonce_source()
        if not isinstance(nonce, bytes) or len(nonce) != _NONCE_SIZE:
            raise RuntimeError(
                f"nonce_source must return exactly {_NONCE_SIZE} bytes, got {nonce!r:.40}"
            )
        sealed = self._ciphers[0][1].encrypt(nonce, plaintext, aad)
        return bytes((ENCRYPTION_VERSION,)) + nonce + sealed

    def decrypt(self, payload: _Bytes, aad: _Bytes = b"") -> bytes:
        """Open a version 0 or 1 payload with the first key that authenticates it and ``aad``.

        Raises :class:`DecodeError` (and nothing else) when the payload is malformed or no
        installed key authenticates it.
        """
        data = bytes(payload)
        if not data:
            raise DecodeError("empty encrypted payload")
        version = data[0]
        if version not in (0, 1):
            raise DecodeError("unsupported encryption version")
        if len(data) < encrypted_length(version, 0):
            raise DecodeError("encrypted payload too short")
        view = memoryview(data)  # slices without copying a large stream payload again
        nonce = view[_VERSION_SIZE : _VERSION_SIZE + _NONCE_SIZE]
        sealed = view[_VERSION_SIZE + _NONCE_SIZE :]
        for _, cipher in self._ciphers:
            try:
                plain = cipher.decrypt(nonce, sealed, aad)
            except self._invalid_tag:
                continue
            except OverflowError:  # payload or aad over the 2 GiB that AESGCM accepts
                raise DecodeError("encrypted payload too large") from None
            return _pkcs7_unpad(plain) if version == 0 else plain
        raise DecodeError("no installed key could decrypt the payload")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Load a Serf keyring file (a JSON array of base64 keys, primary first)."""
        name = os.fspath(path)
        try:
            entries = json.loads(Path(path).read_bytes())
        except ValueError as exc:  # bad JSON or bad UTF-8
            raise KeyringError(
                f"keyring file {name!r} is not valid JSON ({exc}); "
                'it must be a JSON array of base64 keys, e.g. ["<key>"]'
            ) from None
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise KeyringError(f"keyring file {name!r} must be a JSON array of base64 key strings")
        if not entries:
            raise KeyringError(f"keyring file {name!r} holds no keys; add at least one base64 key")
        keys = []
        for index, entry in enumerate(entries):
            try:
                keys.append(decode_key(entry))
            except KeyringError as exc:
                raise KeyringError(f"keyring file {name!r}, entry {index}: {exc}") from None
        return cls(keys)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the keys as a Serf keyring file, atomically and readable only by the owner."""
        target = Path(path)
        body = json.dumps([encode_key(key) for key in self.keys], indent=2)
        # mkstemp creates the file with mode 0600 in the target's directory, so os.replace is
        # atomic and the keys are never readable by others, not even briefly.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as tmp:
                tmp.write(body)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise


def _pkcs7_unpad(plain: bytes) -> bytes:
    """Strip version 0 padding, rejecting a pad length that cannot be right.

    ``plain`` is at least one block long: shorter version 0 payloads are refused before this.
    """
    pad = plain[-1]
    if (
        not 1 <= pad <= _BLOCK_SIZE
        or len(plain) % _BLOCK_SIZE
        or plain[-pad:] != bytes([pad]) * pad
    ):
        # A sender pads whole blocks with the pad length; anything else is damage (the version
        # byte is not authenticated, so a flipped one lands here with a version 1 plaintext).
        raise DecodeError("bad PKCS7 padding in version 0 payload")
    return plain[:-pad]


def decode_key(text: str) -> bytes:
    """Decode a base64 key as Serf prints and stores it, checking it is a valid AES key."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise KeyringError(
            "key is not valid base64; use standard base64 with padding, as `serf keygen` prints"
        ) from None
    return _validate_key(key)


def encode_key(key: _Bytes) -> str:
    """Encode a key as standard base64, the form Serf prints and stores."""
    return base64.b64encode(_validate_key(key)).decode("ascii")
