"""The kinds of problem triage sorts incidents into."""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    DATABASE = "database"
    NETWORK = "network"
    APPLICATION = "application"
    HARDWARE = "hardware"
    SECURITY = "security"
    PERFORMANCE = "performance"
    ACCESS = "access"
    OTHER = "other"
