"""The admin API's settings: its bearer token, given in the config or read from token_file
(at load and reload). No token: the admin API is off."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr, field_validator
from pydantic_core import PydanticCustomError

from replwatch.config.base import StrictModel


class AdminConfig(StrictModel):
    token: SecretStr | None = None
    token_file: Path | None = None

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            # an empty token would let in anyone who sends "Authorization: Bearer "
            raise PydanticCustomError(
                "token", "must not be empty (leave admin.token out to disable the admin API)"
            )
        return v
