"""Identifiers of the trust space and their check digits: addresses, RPPS, ADELI, FINESS, SIREN, SIRET.

Pure functions, no I/O. ``check_*`` return the canonical form or raise ``InvalidEntry`` with a reason an operator can
act on; ``luhn_valid`` is the Luhn (ISO/IEC 7812-1 annex B) check used by RPPS, FINESS, SIREN and SIRET.
"""

from __future__ import annotations

import re

from mssecure.errors import InvalidEntry

__all__ = [
    "IDENTIFIER_PREFIX",
    "check_address",
    "check_adeli",
    "check_finess",
    "check_person_identifier",
    "check_rpps",
    "check_siren",
    "check_siret",
    "check_structure_identifier",
    "luhn_check_digit",
    "luhn_valid",
    "national_id",
]

# Prefix of the "identifiant national" of a professional: type code + identifier (ANS, RPPS/ADELI nomenclature).
IDENTIFIER_PREFIX = {"ADELI": "0", "RPPS": "8"}

# RFC 5321 §4.1.2 Dot-string, restricted to the ASCII letters, digits and "._+-" that certified addresses use;
# RFC 5321 §4.5.3.1: local part at most 64 octets, whole path at most 254 (RFC 3696 erratum 1690).
_LOCAL_RE = re.compile(r"[a-z0-9_+-]+(?:\.[a-z0-9_+-]+)*")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


_DOUBLED = {str(d): (2 * d - 9 if d > 4 else 2 * d) for d in range(10)}


def luhn_check_digit(digits: str) -> str:
    """The Luhn digit to append to ``digits`` so that the whole passes ``luhn_valid``."""
    # Once the check digit is appended, the last digit here and every second one before it get doubled.
    total = sum(map(_DOUBLED.__getitem__, digits[::-1][::2])) + sum(map(int, digits[::-1][1::2]))
    return str(-total % 10)


def luhn_valid(digits: str) -> bool:
    """Whether a string of ASCII digits passes the Luhn check."""
    if not digits.isascii() or not digits.isdigit():
        return False
    return luhn_check_digit(digits[:-1]) == digits[-1]


def check_address(value: str) -> str:
    """The address lowercased if it is a valid certified address, else InvalidEntry saying what is wrong."""
    address = value.strip()
    if not address:
        raise InvalidEntry("empty address")
    if not address.isascii():  # before lower(): "K" (Kelvin sign) lowercases to an ASCII "k"
        raise InvalidEntry(f"bad address {value!r}: only ASCII addresses are certified")
    address = address.lower()
    if address.count("@") != 1:
        raise InvalidEntry(f"bad address {value!r}: expected local-part@domain")
    local, domain = address.split("@")
    if not local or len(local) > 64 or not _LOCAL_RE.fullmatch(local):
        raise InvalidEntry(f"bad address {value!r}: invalid local part")
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise InvalidEntry(f"bad address {value!r}: invalid domain")
    if len(address) > 254:
        raise InvalidEntry(f"bad address {value!r}: longer than 254 characters")
    return address


def _digits(kind: str, value: str, length: int) -> str:
    identifier = value.strip()
    if len(identifier) != length or not identifier.isascii() or not identifier.isdigit():
        raise InvalidEntry(f"bad identifier: {kind} {value!r} must be {length} digits")
    return identifier


def check_rpps(value: str) -> str:
    """An RPPS number: 11 digits, the last one a Luhn key."""
    rpps = _digits("RPPS", value, 11)
    if not luhn_valid(rpps):
        raise InvalidEntry(f"bad identifier key: RPPS {rpps} fails the Luhn check")
    return rpps


def check_adeli(value: str) -> str:
    """An ADELI number: 9 digits (department, profession, order number, key); its key is not published as Luhn."""
    return _digits("ADELI", value, 9)


def check_finess(value: str) -> str:
    """A FINESS number: 9 characters, a department (two digits, or 2A/2B in Corsica) then digits, Luhn key last.

    For Corsica the key is computed with the department written 20 (ANS, FINESS nomenclature).
    """
    finess = value.strip().upper()
    digits = finess[:1] + "0" + finess[2:] if finess[:2] in ("2A", "2B") else finess
    if len(finess) != 9 or not digits.isascii() or not digits.isdigit():
        raise InvalidEntry(f"bad identifier: FINESS {value!r} must be 9 characters (digits, 2A/2B for Corsica)")
    if not luhn_valid(digits):
        raise InvalidEntry(f"bad identifier key: FINESS {finess} fails the Luhn check")
    return finess


def check_siren(value: str) -> str:
    """A SIREN number: 9 digits, Luhn key last."""
    siren = _digits("SIREN", value, 9)
    if not luhn_valid(siren):
        raise InvalidEntry(f"bad identifier key: SIREN {siren} fails the Luhn check")
    return siren


def check_siret(value: str) -> str:
    """A SIRET number: 14 digits (SIREN + establishment), Luhn key last.

    La Poste's establishments (SIREN 356000000) are numbered past the Luhn scheme: their digit sum is a
    multiple of 5 instead (INSEE).
    """
    siret = _digits("SIRET", value, 14)
    if siret.startswith("356000000") and siret != "35600000000048":
        if sum(int(c) for c in siret) % 5 == 0:
            return siret
    elif luhn_valid(siret):
        return siret
    raise InvalidEntry(f"bad identifier key: SIRET {siret} fails the check")


_PERSON_CHECKS = {"RPPS": check_rpps, "ADELI": check_adeli}
_STRUCTURE_CHECKS = {"FINESS": check_finess, "SIREN": check_siren, "SIRET": check_siret, "RPPS": check_rpps}


def check_person_identifier(kind: str, value: str) -> str:
    """Validate a professional's identifier of ``kind`` (RPPS or ADELI)."""
    try:
        return _PERSON_CHECKS[kind](value)
    except KeyError:
        raise InvalidEntry(f"unknown identifier type {kind!r} (expected RPPS or ADELI)") from None


def check_structure_identifier(kind: str, value: str) -> str:
    """Validate a structure identifier of ``kind`` (FINESS, SIREN, SIRET, or RPPS for a practice)."""
    try:
        return _STRUCTURE_CHECKS[kind](value)
    except KeyError:
        known = ", ".join(_STRUCTURE_CHECKS)
        raise InvalidEntry(f"unknown structure identifier type {kind!r} (expected {known})") from None


def national_id(kind: str, identifier: str) -> str:
    """The "identifiant national" of a professional: the type prefix then the identifier (``8`` + RPPS)."""
    return IDENTIFIER_PREFIX[kind] + identifier
