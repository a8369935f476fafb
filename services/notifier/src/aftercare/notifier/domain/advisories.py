"""Which customer systems an advisory concerns: the product by name (case-insensitive) and the
version inside the advisory's range, compared as versions (PEP 440 specifiers via ``packaging``),
never as strings ('10.2' is newer than '9.6')."""

from __future__ import annotations

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from aftercare.events.tenants import SupportedSystem


class InvalidVersionRange(ValueError):
    pass


def parse_range(text: str) -> SpecifierSet:
    try:
        return SpecifierSet(text)
    except InvalidSpecifier:
        raise InvalidVersionRange(f"{text!r} is not a version range; write e.g. '>=2.0,<2.4.3' or '==15.*'") from None


def affected(systems: list[SupportedSystem], product: str, versions: SpecifierSet) -> list[SupportedSystem]:
    """The systems that run ``product`` at a version inside ``versions``. A system whose version
    is missing or not a version cannot be matched and is left out (the advisory says so)."""
    found = []
    for system in systems:
        if not system.product or system.product.strip().lower() != product.strip().lower() or not system.version:
            continue
        try:
            version = Version(system.version)
        except InvalidVersion:
            continue
        if versions.contains(version, prereleases=True):
            found.append(system)
    return found
