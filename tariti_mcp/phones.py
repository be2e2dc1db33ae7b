"""Phone numbers: normalisation with phonenumbers, and the last-ten-digits rule both APIs match by.

``+7 916 …``, ``8 916 …``, ``7916…`` and ``916…`` are one Russian line; amoCRM places calls
and Moizvonki integrations compare numbers by their last ten digits.
"""

from __future__ import annotations

import re

import phonenumbers

_NON_DIGITS = re.compile(r"\D")
# What people type around the digits of a plain number; anything else (доб., ext, #) may be
# an extension whose digits must not count.
_PLAIN = re.compile(r"^[\d\s+()\-.]*$")


def digits(raw: str | int | None) -> str:
    return _NON_DIGITS.sub("", str(raw or ""))


def last10(raw: str | int | None) -> str | None:
    """The last ten digits of the line, or None when too short to match anything.

    An extension (``+7 916 400-00-04 доб. 12``) is not part of the line.
    """
    text = str(raw or "")
    if not _PLAIN.match(text):
        try:
            parsed = phonenumbers.parse(text, "RU")
            text = f"{parsed.country_code}{parsed.national_number}"
        except phonenumbers.NumberParseException:
            pass
    only = digits(text)
    return only[-10:] if len(only) >= 10 else None


def normalize(raw: str, region: str = "RU") -> str | None:
    """Return the number in E.164 (``+79161234567``), or None when it is not a valid number.

    A Russian trunk prefix ``8`` and a bare ten-digit national number are read as ``+7``.
    """
    text = (raw or "").strip()
    if not text:
        return None
    only = digits(text)
    if region == "RU" and not text.startswith("+"):
        # phonenumbers reads "89161234567" correctly, but "79161234567" without a plus
        # would be taken as a national number; both are +7 in practice.
        if len(only) == 11 and only[0] in "78":
            text = "+7" + only[1:]
        elif len(only) == 10:
            text = "+7" + only
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def same_line(a: str | None, b: str | None) -> bool:
    left, right = last10(a), last10(b)
    return left is not None and left == right


def match_key(e164: str) -> str:
    """What a contact search looks for: the last ten digits, or the whole number when it is
    shorter (valid numbers of small countries have fewer than ten digits)."""
    only = digits(e164)
    return only[-10:] if len(only) >= 10 else only


def holds(e164: str, stored: str, region: str = "RU") -> bool:
    """Whether a contact's stored phone value is the line ``e164``.

    Equal last ten digits (so ``8 916…`` and ``+7 916…`` agree), unless the stored value says
    outright that it is in another country: ``+44 20 7946 0958`` is not ``+1 207 946 0958``.
    Numbers shorter than ten digits must be equal as a whole.
    """
    key = match_key(e164)
    if len(key) < 10:
        other = normalize(stored, region)
        return bool(key) and other is not None and digits(other) == digits(e164)
    if last10(stored) != key:
        return False
    other = normalize(stored, region) if str(stored).strip().startswith("+") else None
    if other is None:
        return True
    try:
        mine = phonenumbers.parse(e164).country_code
        theirs = phonenumbers.parse(other).country_code
    except phonenumbers.NumberParseException:
        return True
    return mine == theirs
