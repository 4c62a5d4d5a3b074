"""The AADSTS refusals of the Entra simulator, worded and numbered as Entra ID words them.

A client is judged by how it reads these (azure-identity turns the ``AADSTS`` code into its
exception text, and the product logs that), so each refusal keeps Entra's code and message;
``EntraSimulator`` renders them all in one envelope.
"""

from __future__ import annotations

from collections.abc import Mapping

from simulators.tokens import TokenError, TokenProblem


class EntraError(Exception):
    """An AADSTS error answer; raised inside the handler, rendered in one place."""

    def __init__(self, status: int, error: str, code: int, message: str):
        super().__init__(message)
        self.status = status
        self.error = error
        self.code = code
        self.message = message


def missing_credential() -> EntraError:
    """A registered client that sent neither its secret nor an assertion."""
    return EntraError(
        401,
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: "
        "'client_assertion' or 'client_secret'.",
    )


def required(form: Mapping[str, str], name: str) -> str:
    """``form[name]``; Entra refuses a request that lacks it, or sends it empty."""
    value = form.get(name)
    if not value:
        raise EntraError(
            400,
            "invalid_request",
            900144,
            f"The request body must contain the following parameter: '{name}'.",
        )
    return value


def resource_not_found(resource: str, tenant_id: str) -> EntraError:
    return EntraError(
        400,
        "invalid_resource",
        500011,
        f"The resource principal named {resource} was not found in the tenant named "
        f"{tenant_id}. This can happen if the application has not been installed by the "
        "administrator of the tenant or consented to by any user in the tenant.",
    )


def assertion_error(exc: TokenError) -> EntraError:
    if exc.problem in (TokenProblem.EXPIRED, TokenProblem.NOT_YET_VALID, TokenProblem.REVOKED):
        return EntraError(
            400,
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range.",
        )
    if exc.problem is TokenProblem.WRONG_AUDIENCE:
        audiences = exc.claims.get("aud")
        offered = audiences if isinstance(audiences, list) else [audiences]
        return EntraError(
            400,
            "invalid_client",
            700212,
            "No matching federated identity record found for presented assertion audience "
            f"'{','.join(str(a) for a in offered)}'.",
        )
    if exc.problem is TokenProblem.BAD_SIGNATURE:
        return EntraError(
            401, "invalid_client", 700027, "Client assertion failed signature validation."
        )
    return EntraError(400, "invalid_request", 50027, "JWT token is invalid or malformed.")
