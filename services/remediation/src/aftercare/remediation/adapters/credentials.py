"""The tenants' credentials for their systems' admin endpoints, encrypted at rest (Fernet).

Only the ciphertext is stored; the key comes from settings (``AFTERCARE_REMEDIATION_CREDENTIAL_KEY``)
and never from the store, so a copy of the database alone reveals no credential.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError


class CredentialKeyMissing(RuntimeError):
    pass


class CredentialVault:
    def __init__(self, database: AsyncDatabase[dict[str, Any]], key: str | None) -> None:
        self._credentials = database["system_credentials"]
        self._fernet = Fernet(key.encode()) if key else None

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    @staticmethod
    def _id(tenant_id: str, system: str) -> str:
        return f"{tenant_id}|{system}"

    def _cipher(self) -> Fernet:
        if self._fernet is None:
            raise CredentialKeyMissing(
                "no credential key is configured; set AFTERCARE_REMEDIATION_CREDENTIAL_KEY "
                "(a Fernet key: python -c "
                "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
            )
        return self._fernet

    async def store(self, tenant_id: str, system: str, bearer_token: str, by: str, now: datetime) -> None:
        ciphertext = self._cipher().encrypt(bearer_token.encode()).decode()
        await self._credentials.update_one(
            {"_id": self._id(tenant_id, system)},
            {"$set": {"tenant_id": tenant_id, "system": system, "ciphertext": ciphertext, "set_by": by, "set_at": now}},
            upsert=True,
        )

    async def store_if_none(self, tenant_id: str, system: str, bearer_token: str, by: str, now: datetime) -> bool:
        """Store the credential unless one is stored already (a seed never overwrites an admin's)."""
        ciphertext = self._cipher().encrypt(bearer_token.encode()).decode()
        try:
            await self._credentials.insert_one(
                {
                    "_id": self._id(tenant_id, system),
                    "tenant_id": tenant_id,
                    "system": system,
                    "ciphertext": ciphertext,
                    "set_by": by,
                    "set_at": now,
                }
            )
        except DuplicateKeyError:
            return False
        return True

    async def remove(self, tenant_id: str, system: str) -> bool:
        result = await self._credentials.delete_one({"_id": self._id(tenant_id, system)})
        return result.deleted_count > 0

    async def bearer_token(self, tenant_id: str, system: str) -> str | None:
        """The plain credential for a call, or None when the tenant stored none."""
        document = await self._credentials.find_one({"_id": self._id(tenant_id, system)})
        if document is None:
            return None
        try:
            return self._cipher().decrypt(document["ciphertext"].encode()).decode()
        except InvalidToken:
            raise CredentialKeyMissing(
                f"the stored credential of {system} cannot be decrypted with the configured key (was the key changed?)"
            ) from None

    async def describe(self, tenant_id: str, system: str) -> dict[str, Any] | None:
        """Whether a credential is stored, by whom and when; never the credential itself."""
        document = await self._credentials.find_one({"_id": self._id(tenant_id, system)}, {"ciphertext": 0})
        if document is None:
            return None
        return {"system": system, "set_by": document.get("set_by"), "set_at": document.get("set_at")}
