"""Access tokens shared by the Entra ID simulator (which mints them) and the Sentinel and Log
Analytics simulators (which check them).

Real Entra signs with RS256 and resource servers fetch its JWKS; here one process-wide secret
signed with HS256 stands in for that trust relationship, so a token that was not minted by *this*
minter, that has expired, or that was obtained for another audience is refused exactly where the
real service would refuse it. Tokens are ordinary compact JWTs, so a client that peeks at the
claims (azure-identity does not, but a human debugging does) sees the familiar fields.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

#: Namespace of the deterministic object ids (``oid``) of simulated service principals.
_OID_NAMESPACE = uuid.UUID("5b0e6f0e-4d5c-4c55-9a55-6d6174693273")


class TokenProblem(StrEnum):
    """Why a token was refused; resource simulators map each to their own error body."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_AUDIENCE = "wrong_audience"
    REVOKED = "revoked"


class TokenError(Exception):
    """A token failed validation. ``problem`` says why, ``claims`` holds what could be read."""

    def __init__(self, problem: TokenProblem, detail: str, claims: Mapping[str, Any] | None = None):
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail
        self.claims: Mapping[str, Any] = claims or {}


@dataclass(frozen=True)
class Claims:
    """The validated claims the simulators act on (``raw`` has all of them)."""

    aud: str
    iss: str
    tid: str
    appid: str
    oid: str
    iat: int
    nbf: int
    exp: int
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def identity(self) -> str:
        """Who the per-user quotas are charged to: the calling application's client id."""
        return self.appid or self.oid


def service_principal_oid(tenant_id: str, client_id: str) -> str:
    """The stable object id of an application's service principal in a tenant."""
    return str(uuid.uuid5(_OID_NAMESPACE, f"{tenant_id}/{client_id}"))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_unverified(token: str) -> dict[str, Any] | None:
    """The claims of a compact JWT without checking anything, or ``None`` if it is not one.

    Used only to attribute a request to an identity in logs, never to authorise it.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(_b64decode(parts[1]))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


class TokenMinter:
    """Mints and validates HS256 JWTs, and can revoke them before they expire.

    Revocation exists so the expired-token fault can make a token fail that the client still
    believes valid: the simulated resource answers 401 and keeps refusing that token, which is
    what a client sees when Entra rotates keys or a token is cut short by policy.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        self._kid = hashlib.sha256(self._key).hexdigest()[:16]
        self._revoked: set[str] = set()
        self._not_before: float = 0.0

    def mint(self, claims: Mapping[str, Any]) -> str:
        """Sign arbitrary claims (access tokens, and federated assertions of a fake issuer)."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self._kid}
        signing_input = f"{_b64encode(orjson.dumps(header))}.{_b64encode(orjson.dumps(claims))}"
        return f"{signing_input}.{_b64encode(self._sign(signing_input))}"

    def mint_access_token(
        self,
        *,
        audience: str,
        client_id: str,
        tenant_id: str,
        issuer: str,
        ttl_s: int = 3599,
        now: float | None = None,
        version: str = "2.0",
    ) -> str:
        """An app-only access token as Entra issues for the client-credentials grant."""
        issued = int(time.time() if now is None else now)
        oid = service_principal_oid(tenant_id, client_id)
        claims = {
            "aud": audience,
            "iss": issuer,
            "tid": tenant_id,
            "appid": client_id,
            "azp": client_id,
            "oid": oid,
            "sub": oid,
            "idtyp": "app",
            "ver": version,
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl_s,
            "uti": secrets.token_urlsafe(16),
        }
        return self.mint(claims)

    def revoke(self, token: str) -> None:
        """Refuse ``token`` from now on, even though its ``exp`` is still in the future."""
        self._revoked.add(token)

    def invalidate_issued_before(self, when: float) -> None:
        """Refuse every token issued (``iat``) before ``when`` (epoch seconds)."""
        self._not_before = max(self._not_before, when)

    def validate(self, token: str, audiences: Collection[str], now: float | None = None) -> Claims:
        """The claims of ``token`` if it is ours, current, unrevoked and for one of ``audiences``.

        Raises ``TokenError``. Checks run in the order a resource server runs them, so the most
        fundamental problem is the one reported.
        """
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError(TokenProblem.MALFORMED, "not a compact JWT")
        try:
            header = orjson.loads(_b64decode(parts[0]))
            claims = orjson.loads(_b64decode(parts[1]))
            signature = _b64decode(parts[2])
        except (ValueError, binascii.Error) as exc:
            raise TokenError(TokenProblem.MALFORMED, "undecodable segment") from exc
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise TokenError(TokenProblem.MALFORMED, "header or claims are not JSON objects")
        if header.get("alg") != "HS256" or not hmac.compare_digest(
            signature, self._sign(f"{parts[0]}.{parts[1]}")
        ):
            raise TokenError(TokenProblem.BAD_SIGNATURE, "signature does not verify", claims)
        try:
            iat, nbf, exp = int(claims["iat"]), int(claims["nbf"]), int(claims["exp"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TokenError(TokenProblem.MALFORMED, "missing time claims", claims) from exc
        current = time.time() if now is None else now
        if token in self._revoked or iat < self._not_before:
            raise TokenError(TokenProblem.REVOKED, "token was revoked", claims)
        if exp <= current:
            raise TokenError(TokenProblem.EXPIRED, f"expired at {exp}", claims)
        if nbf > current:
            raise TokenError(TokenProblem.NOT_YET_VALID, f"not valid before {nbf}", claims)
        # ``aud`` may be a list in a JWT (service-account tokens use one); any match will do.
        raw_aud = claims.get("aud")
        offered = raw_aud if isinstance(raw_aud, list) else [raw_aud]
        aud = next((a for a in offered if isinstance(a, str) and a in audiences), None)
        if aud is None:
            raise TokenError(TokenProblem.WRONG_AUDIENCE, f"audience {raw_aud!r}", claims)
        return Claims(
            aud=aud,
            iss=str(claims.get("iss", "")),
            tid=str(claims.get("tid", "")),
            appid=str(claims.get("appid") or claims.get("azp") or ""),
            oid=str(claims.get("oid", "")),
            iat=iat,
            nbf=nbf,
            exp=exp,
            raw=claims,
        )

    def _sign(self, signing_input: str) -> bytes:
        return hmac.new(self._key, signing_input.encode("ascii"), hashlib.sha256).digest()
