"""How each provider signs its callbacks, both ways: verify (the web service) and sign (the
sandbox, which plays the providers' side).

Every check runs over the exact bytes received, never over a re-serialised body.

- SendGrid: ECDSA P-256 / SHA-256 over ``timestamp + raw body``; the public key is base64 DER
  SubjectPublicKeyInfo, the signature base64 DER.
- Mailgun: hex HMAC-SHA256 keyed with the webhook signing key over ``timestamp + token``. The
  signature does not cover the event, so a stale timestamp or a reused token is refused.
- Twilio: base64 HMAC-SHA1 keyed with the auth token over the full URL followed by every POST
  parameter sorted by name (name then value, no delimiters).
- Aliyun signs nothing: its callback path carries an unguessable token instead, compared in
  constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clm_core.errors import SignatureError

# A fixed key pair for the sandbox, so that a project talking to the local sandbox verifies its
# callbacks without configuration. It signs nothing a real provider sends.
_SANDBOX_SECRET = int.from_bytes(hashlib.sha256(b"clm sandbox sendgrid webhook").digest(), "big")


def sandbox_sendgrid_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(_SANDBOX_SECRET % (2**255), ec.SECP256R1())


def public_key_b64(private: ec.EllipticCurvePrivateKey) -> str:
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


SANDBOX_SENDGRID_PUBLIC_KEY = public_key_b64(sandbox_sendgrid_private_key())


def load_sendgrid_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER), or PEM armoured."""
    try:
        if "BEGIN PUBLIC KEY" in text:
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text.strip()))
    except ValueError as exc:
        raise SignatureError("the SendGrid webhook verification key is not a valid public key") \
            from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError("the SendGrid webhook verification key is not an ECDSA key")
    return key


def sign_sendgrid(private: ec.EllipticCurvePrivateKey, timestamp: str, body: bytes) -> str:
    return base64.b64encode(private.sign(timestamp.encode() + body,
                                         ec.ECDSA(hashes.SHA256()))).decode()


def verify_sendgrid(key: ec.EllipticCurvePublicKey, signature: str | None, timestamp: str | None,
                    body: bytes) -> None:
    if not signature or not timestamp:
        raise SignatureError("SendGrid signature or timestamp header missing")
    try:
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + body,
                   ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("SendGrid signature does not match") from exc


def sign_mailgun(key: str, timestamp: str, token: str) -> str:
    return hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


class TokenMemory:
    """The Mailgun tokens seen within the accepted age, so a captured request cannot be
    replayed. Per process: run one web service process, or accept that each one remembers its
    own tokens (a replayed event is still stored only once, by its event id)."""

    def __init__(self, max_age: float, limit: int = 200_000):
        self.max_age, self.limit = max_age, limit
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_use(self, token: str, now: float) -> bool:
        with self._lock:
            while self._seen:
                oldest, at = next(iter(self._seen.items()))
                if at >= now - self.max_age and len(self._seen) < self.limit:
                    break
                del self._seen[oldest]
            if token in self._seen:
                return False
            self._seen[token] = now
            return True

    def forget(self, token: str) -> None:
        """The request was not processed (nothing stored): its retry may reuse the token."""
        with self._lock:
            self._seen.pop(token, None)


def verify_mailgun(key: str, timestamp: str, token: str, signature: str, *, now: float,
                   max_age: float, memory: TokenMemory | None) -> None:
    if not (timestamp and token and signature):
        raise SignatureError("Mailgun signature block incomplete (timestamp, token, signature)")
    expected = sign_mailgun(key, timestamp, token)
    if not hmac.compare_digest(expected, signature.lower()):
        raise SignatureError("Mailgun signature does not match")
    try:
        age = now - float(timestamp)
    except ValueError:
        raise SignatureError("Mailgun timestamp is not a number") from None
    if abs(age) > max_age:
        raise SignatureError(
            f"Mailgun timestamp is {age:.0f}s away from now (limit {max_age:.0f}s)"
        )
    if memory is not None and not memory.first_use(token, now):
        raise SignatureError("Mailgun token was used before (replayed request)")


def twilio_signature(token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    data = url + "".join(k + v for k, v in sorted(params, key=lambda kv: kv[0]))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def verify_twilio(token: str, url: str, params: Iterable[tuple[str, str]],
                  signature: str | None) -> None:
    if not signature:
        raise SignatureError("X-Twilio-Signature header missing")
    if not hmac.compare_digest(twilio_signature(token, url, params), signature):
        raise SignatureError("X-Twilio-Signature does not match")


def verify_path_token(expected: str, given: str) -> None:
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        raise SignatureError("unknown callback path")


def now_seconds() -> float:
    """Wall-clock seconds: signature freshness is about the real time a request arrived."""
    return time.time()
