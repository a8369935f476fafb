"""Files that arrive with incidents (faxed PDFs and TIFFs by email, screenshots), kept by intake.

Stored in the ``attachments`` collection (one document per file, bytes inline) with a size
limit per file well under the store's 16 MB document limit; events carry only a reference.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from bson import Binary
from pymongo.asynchronous.database import AsyncDatabase

from aftercare.events.incidents import AttachmentRef


class AttachmentTooLarge(ValueError):
    pass


class AttachmentStore:
    def __init__(self, database: AsyncDatabase[dict[str, Any]], max_bytes: int) -> None:
        self._files = database["attachments"]
        self.max_bytes = max_bytes

    async def ensure_indexes(self) -> None:
        await self._files.create_index("tenant_id")

    async def keep(
        self, tenant_id: str, filename: str, content_type: str, content: bytes, attachment_id: str | None = None
    ) -> AttachmentRef:
        if len(content) > self.max_bytes:
            raise AttachmentTooLarge(f"{filename} is {len(content)} bytes; the limit is {self.max_bytes}")
        attachment_id = attachment_id or str(uuid.uuid4())
        await self._files.update_one(
            {"_id": attachment_id},
            {
                "$setOnInsert": {
                    "tenant_id": tenant_id,
                    "filename": filename,
                    "content_type": content_type,
                    "size_bytes": len(content),
                    "content": Binary(content),
                    "stored_at": datetime.now(UTC),
                }
            },
            upsert=True,
        )
        return AttachmentRef(
            attachment_id=attachment_id, filename=filename, content_type=content_type, size_bytes=len(content)
        )

    async def fetch(self, tenant_id: str, attachment_id: str) -> tuple[AttachmentRef, bytes] | None:
        # By _id alone (the one filter the embedded store answers from an index), tenant checked here.
        document = await self._files.find_one({"_id": attachment_id})
        if document is None or document.get("tenant_id") != tenant_id:
            return None
        ref = AttachmentRef(
            attachment_id=attachment_id,
            filename=document["filename"],
            content_type=document["content_type"],
            size_bytes=document["size_bytes"],
        )
        return ref, bytes(document["content"])
