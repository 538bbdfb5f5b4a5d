"""DKIM signatures (RFC 6376): every message signed on its way out by the configured keys.

dkimpy does what it does well: reading the header, canonicalising it, laying out and
folding the DKIM-Signature header, and (in tests) verifying it. The signature itself
is made by OpenSSL through `cryptography`: dkimpy's RSA is pure Python, about 7 ms a
message with a 2048-bit key, where OpenSSL takes about 0.4 ms and lets go of the GIL
meanwhile, so the other sending threads go on. Ed25519 (RFC 8463) takes 0.04 ms.

Canonicalisation is relaxed for the header, which relays refold, and simple for the
body. Our bodies are 7-bit quoted-printable with CRLF line ends, lines within 76
characters and no trailing white space, which relays pass on untouched: relaxed would
guard against changes they do not make, and dkimpy's relaxed body costs 1.1-1.9 ms on
a 30-40 KB digest (a regular-expression substitution per space, more than the rest of
the send path), where simple is a SHA-256 of the bytes as they are (0.04 ms).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import dkim  # type: ignore[import-untyped]
import idna
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy  # type: ignore[import-untyped]

from newsletter.errors import InvalidInput

if TYPE_CHECKING:  # config may check the keys at start-up without an import cycle
    from newsletter.config import Settings

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# What the signature covers, when present. Each is listed twice ("oversigned"): the
# second, absent instance signs that there is no other, so a second From or
# List-Unsubscribe added on the way breaks the signature instead of riding on it.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)
_SIGNED_SET = frozenset(SIGNED_HEADERS)
CANONICALIZATION = b"relaxed/simple"
_POLICY = CanonicalizationPolicy.from_c_value(CANONICALIZATION)
# Below this an RSA key is refused by receivers (RFC 8301).
MIN_RSA_BITS = 1024
# Sizes `generate_key` makes (RFC 8301: at least 2048 for new keys). A 4096-bit key
# signs about 6 times slower than a 2048-bit one.
RSA_BITS = (2048, 3072, 4096)
_HEADER_NAME = b"DKIM-Signature"
# rsa-sha256 is PKCS#1 v1.5 over a SHA-256 the signer has already taken.
_PKCS1 = padding.PKCS1v15()
_PREHASHED = utils.Prehashed(hashes.SHA256())


class DkimKeyError(InvalidInput):
    """DKIM settings that cannot sign: a key file missing, unreadable or of the wrong
    kind, a selector or domain that is not a DNS name."""


# A selector is one or more DNS labels (RFC 6376 section 3.1).
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_selector(selector: str) -> str:
    """`selector`, refused unless it is DNS labels separated by dots."""
    if not all(_LABEL.fullmatch(label) for label in selector.split(".")):
        raise DkimKeyError(
            f"DKIM selector {selector!r} must be letters, digits and hyphens "
            "(dots between labels), e.g. news2026"
        )
    return selector


def load_private_key(path: str | Path) -> PrivateKey:
    """The PEM private key in `path` (RSA or Ed25519, no passphrase)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DkimKeyError(f"DKIM key file {path} does not exist") from None
    except OSError as exc:
        raise DkimKeyError(f"cannot read the DKIM key file {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise DkimKeyError(
            f"the DKIM key in {path} is encrypted: store it without a passphrase "
            "(and readable by the sender alone)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DkimKeyError(f"{path} does not hold a PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(
                f"the RSA key in {path} has {key.key_size} bits; receivers ignore "
                f"signatures by keys under {MIN_RSA_BITS} (2048 is usual)"
            )
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise DkimKeyError(f"the key in {path} is neither RSA nor Ed25519")


def key_type(key: PrivateKey) -> str:
    """The DNS record's k= value: "rsa" or "ed25519"."""
    return "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ed25519"


def dns_record(private_key: PrivateKey) -> str:
    """The TXT value publishing this key's public half: "v=DKIM1; k=rsa; p=..."."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        raw = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        # RFC 8463: the bare 32-byte key, not wrapped in a SubjectPublicKeyInfo.
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k={key_type(private_key)}; p={base64.b64encode(raw).decode('ascii')}"


def generate_key(algorithm: str, bits: int = 2048) -> PrivateKey:
    """A new signing key: "rsa" of `bits` bits, or "ed25519"."""
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm != "rsa":
        raise DkimKeyError(f"unknown DKIM key algorithm {algorithm!r}: rsa or ed25519")
    if bits not in RSA_BITS:
        raise DkimKeyError(
            f"an RSA key of {bits} bits? Use one of {', '.join(map(str, RSA_BITS))} (2048 is usual)"
        )
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_pem(key: PrivateKey) -> bytes:
    """The key as PKCS#8 PEM, unencrypted: what `load_private_key` reads."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def zone_strings(value: str) -> str:
    """A TXT value as a zone file writes it: quoted strings of at most 255 characters
    (an RSA key's record is longer than one string may be)."""
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


def record_name(selector: str, domain: str) -> str:
    """Where the TXT record goes: `selector._domainkey.domain`."""
    return f"{selector}._domainkey.{domain}"


@dataclass(frozen=True)
class SigningKey:
    selector: bytes
    key: PrivateKey

    @property
    def algorithm(self) -> bytes:
        return b"rsa-sha256" if isinstance(self.key, rsa.RSAPrivateKey) else b"ed25519-sha256"

    def sign(self, digest: bytes) -> bytes:
        """The signature of a SHA-256 `digest` of the canonical header."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, _PKCS1, _PREHASHED)
        # RFC 8463: Ed25519 signs the SHA-256 of the header, not the header itself.
        return self.key.sign(digest)


class Signer:
    """Signs messages for one domain with one key, or two (dual signing: RSA for every
    verifier, Ed25519 for those that know it). Immutable, so shared by all threads."""

    def __init__(self, domain: str, keys: Sequence[SigningKey]) -> None:
        if not keys:
            raise ValueError("a signer needs a key")
        self.domain = domain.encode("ascii")
        self.keys = tuple(keys)

    def sign(self, data: bytes, now: int | None = None) -> bytes:
        """`data` with a DKIM-Signature header per key in front of it."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            raise dkim.MessageFormatError("a message without a blank line after its header")
        headers, _ = dkim.rfc822_parse(data[: end + 4])
        # Only the signed headers are canonicalised and searched: the rest is not hashed.
        canonical = _POLICY.canonicalize_headers(
            [h for h in headers if h[0].lower() in _SIGNED_SET]
        )
        present = {name for name, _ in canonical}
        signed = tuple(name for name in SIGNED_HEADERS if name in present)
        body_hash = base64.b64encode(
            hashlib.sha256(_POLICY.canonicalize_body(data[end + 4 :])).digest()
        )
        stamp = str(int(time.time()) if now is None else now).encode("ascii")
        lines = [
            self._signature(key, canonical, signed + signed, body_hash, stamp) for key in self.keys
        ]
        return b"".join([*lines, data])

    def _signature(
        self,
        key: SigningKey,
        canonical: list[tuple[bytes, bytes]],
        signed: tuple[bytes, ...],
        body_hash: bytes,
        stamp: bytes,
    ) -> bytes:
        """One DKIM-Signature header line, laid out as dkimpy's own signer does."""
        fields = [
            (b"v", b"1"),
            (b"a", key.algorithm),
            (b"c", CANONICALIZATION),
            (b"d", self.domain),
            (b"s", key.selector),
            (b"t", stamp),
            (b"h", b" : ".join(signed)),
            (b"bh", body_hash),
            # A placeholder as long as a signature's first line, so b= is folded onto
            # a line of its own and the tags before it fold the same way once it is set.
            (b"b", b"0" * 60),
        ]
        value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_HEADER_NAME))
        # hash_headers hashes this header with its b= emptied, as a verifier will.
        hasher = hashlib.sha256()
        dkim.hash_headers(
            hasher, _POLICY, canonical, signed, (_HEADER_NAME, b" " + value), dict(fields)
        )
        fields[-1] = (b"b", base64.b64encode(key.sign(hasher.digest())))
        value = b"; ".join(b"=".join(f) for f in fields) + b"\r\n"
        folded: bytes = dkim.fold(value, namelen=len(_HEADER_NAME))
        return _HEADER_NAME + b": " + folded


def signer_for(settings: Settings) -> Signer | None:
    """The signer the settings ask for, or None while DKIM is off; keys are read once
    per process. Raises DkimKeyError (a clear message) for a key that cannot be used."""
    if not (settings.dkim_domain and settings.dkim_selector and settings.dkim_key_file):
        return None
    keys = [(settings.dkim_selector, settings.dkim_key_file)]
    if settings.dkim_selector_2 or settings.dkim_key_file_2:
        if not (settings.dkim_selector_2 and settings.dkim_key_file_2):
            raise DkimKeyError(
                "dual signing needs both NEWSLETTER_DKIM_SELECTOR_2 and NEWSLETTER_DKIM_KEY_FILE_2"
            )
        keys.append((settings.dkim_selector_2, settings.dkim_key_file_2))
    return _signer(settings.dkim_domain, tuple(keys))


@lru_cache(maxsize=8)
def _signer(domain: str, keys: tuple[tuple[str, str], ...]) -> Signer:
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise DkimKeyError(f"NEWSLETTER_DKIM_DOMAIN {domain!r} is not a domain name") from None
    return Signer(
        ascii_domain,
        [
            SigningKey(check_selector(selector).encode("ascii"), load_private_key(path))
            for selector, path in keys
        ],
    )
