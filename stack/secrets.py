"""The secrets every stack generates once, whatever runs it."""
from __future__ import annotations

import secrets as secrets_mod

SECRET_NAMES = ("postgres_password", "app_password", "redis_password", "admin_token")


def new_secrets() -> dict:
    return {name: secrets_mod.token_urlsafe(18) for name in SECRET_NAMES}
