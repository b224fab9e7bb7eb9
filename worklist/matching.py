"""The matching rules of DICOM PS3.4 C.2.2.2 as small pure functions (Modality Worklist, Annex K).

One function per matching type: universal (C.2.2.2.3), single value (C.2.2.2.1), wildcard
(C.2.2.2.4), range for DA/TM and the combined date-time range (C.2.2.2.5, C.2.2.2.5.1), list
of UIDs (C.2.2.2.2). Each type has a parser that turns a query value into bounds or a pattern
(used by worklist.mwl to build SQL) and a predicate that matches one stored value (used by
the tests, with tables taken from PS3.4, and to re-check PN candidates in "exact" mode).

Person names (PN): PS3.4 leaves case sensitivity of PN literal matching to the implementation;
`fold_pn` gives the case- and accent-insensitive form we use by default ("Nguyễn" = "NGUYEN").
"""

from __future__ import annotations

import datetime as dt
import re

from ris.models import fold_for_search

# C.2.2.2.4: '*' and '?' are wildcards only in these VRs; elsewhere they are literal.
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
DATE_PATTERN = re.compile(r"^\d{8}$")
TIME_PATTERN = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")


class InvalidMatchingValue(ValueError):
    """A query value that no matching type accepts (answered with a failure status)."""


# --- Universal and single value ------------------------------------------------------


def is_universal(value: str | None) -> bool:
    """C.2.2.2.3: a zero-length value, or a value of only '*', matches every entity."""
    return value is None or value in ("", "*")


def single_value_matches(stored: str, query: str, *, fold: bool = False) -> bool:
    """C.2.2.2.1: exact (case-sensitive) equality; PN may be folded (implementation-defined)."""
    if not stored:
        return False  # a zero-length stored value never matches a non-universal key
    return fold_pn(stored) == fold_pn(query) if fold else stored == query


# --- Wildcard ----------------------------------------------------------------------


def has_wildcard(value: str, vr: str) -> bool:
    return vr in WILDCARD_VRS and ("*" in value or "?" in value)


def wildcard_regex(pattern: str) -> re.Pattern:
    """'*' = any run of characters (also none), '?' = exactly one character; the rest literal."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def wildcard_matches(stored: str, pattern: str, *, fold: bool = False) -> bool:
    """C.2.2.2.4: wildcard matching (case-sensitive, except PN when folded)."""
    if not stored:
        return False
    if fold:
        stored, pattern = fold_pn(stored), fold_pn(pattern)
    return wildcard_regex(pattern).fullmatch(stored) is not None


def wildcard_to_glob(pattern: str) -> str:
    """The same pattern for SQLite GLOB (case-sensitive): '[' '*' '?' only occur as wildcards
    in a DICOM pattern except '[', which is escaped as a one-character class."""
    return pattern.replace("[", "[[]")


def wildcard_to_like(pattern: str) -> str:
    """The same pattern for SQL LIKE with ESCAPE '\\' (PostgreSQL: case-sensitive)."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


# --- Person names ------------------------------------------------------------------


def alphabetic_group(pn: str) -> str:
    """The alphabetic component group of a PN (before the first '='), trailing '^' dropped."""
    return pn.split("=", 1)[0].rstrip("^ ")


def fold_pn(pn: str) -> str:
    """Upper-case, accent-free alphabetic group: the form Patient.name_search stores."""
    return fold_for_search(alphabetic_group(pn))


# --- List of UIDs ------------------------------------------------------------------


def parse_uid_list(value: str) -> list[str]:
    """C.2.2.2.2: 'uid1\\uid2\\...' matches an entity with any one of them."""
    uids = [u.strip().rstrip("\x00") for u in value.split("\\")]
    for uid in uids:
        if len(uid) > 64 or not UID_PATTERN.match(uid):
            raise InvalidMatchingValue(f"{uid!r} is not a valid UID")
    return uids


def uid_list_matches(stored: str, value: str) -> bool:
    return bool(stored) and stored in parse_uid_list(value)


# --- Ranges: DA, TM and combined date-time ---------------------------------------------


def parse_date(value: str) -> dt.date:
    if not DATE_PATTERN.match(value):
        raise InvalidMatchingValue(f"{value!r} is not a DICOM date (YYYYMMDD)")
    try:
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise InvalidMatchingValue(f"{value!r} is not a calendar date") from None


def parse_time(value: str, *, upper: bool = False) -> dt.time:
    """A TM of any precision (HH, HHMM, HHMMSS, HHMMSS.F-FFFFFF). As a lower bound it means the
    start of what it names; as an upper bound the end ('10' up to 10:59:59.999999)."""
    m = TIME_PATTERN.match(value)
    if not m:
        raise InvalidMatchingValue(f"{value!r} is not a DICOM time (HHMMSS.FFFFFF)")
    hh, mm, ss, frac = m.groups()
    top = 59 if upper else 0
    try:
        micro = int((frac or "").ljust(6, "9" if upper else "0"))
        return dt.time(int(hh), int(mm) if mm else top, int(ss) if ss else top, micro)
    except ValueError:
        raise InvalidMatchingValue(f"{value!r} is not a time of day") from None


def _split_range(value: str) -> tuple[str, str, bool]:
    if value.count("-") > 1:
        raise InvalidMatchingValue(f"{value!r} is not a range (a-b, -b or a-)")
    low, dash, high = value.partition("-")
    return low.strip(), high.strip(), bool(dash)


def parse_date_range(value: str) -> tuple[dt.date | None, dt.date | None]:
    """C.2.2.2.5: 'd' (single date), 'd1-d2', '-d2', 'd1-' (inclusive bounds, None = open)."""
    low, high, is_range = _split_range(value)
    if not is_range:
        day = parse_date(low)
        return day, day
    if not low and not high:
        raise InvalidMatchingValue("'-' is not a range")
    bounds = (parse_date(low) if low else None, parse_date(high) if high else None)
    if bounds[0] and bounds[1] and bounds[0] > bounds[1]:
        raise InvalidMatchingValue(f"{value!r}: the range ends before it starts")
    return bounds


def parse_time_range(value: str) -> tuple[dt.time | None, dt.time | None]:
    """TM range; it never crosses midnight (C.2.2.2.5: t1 must not be later than t2)."""
    low, high, is_range = _split_range(value)
    if not is_range:
        return parse_time(low), parse_time(low, upper=True)
    if not low and not high:
        raise InvalidMatchingValue("'-' is not a range")
    bounds = (parse_time(low) if low else None, parse_time(high, upper=True) if high else None)
    if bounds[0] and bounds[1] and bounds[0] > bounds[1]:
        raise InvalidMatchingValue(f"{value!r}: a time range cannot cross midnight")
    return bounds


def date_range_matches(stored: dt.date | None, value: str) -> bool:
    if stored is None:
        return False
    low, high = parse_date_range(value)
    return (low is None or stored >= low) and (high is None or stored <= high)


def time_range_matches(stored: dt.time | None, value: str) -> bool:
    if stored is None:
        return False
    low, high = parse_time_range(value)
    return (low is None or stored >= low) and (high is None or stored <= high)


def combined_datetime_range(
    date_value: str, time_value: str, zone: dt.tzinfo
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """C.2.2.2.5.1: a date key and a time key of one entity form one date-time range.

    '20060705-20060707' with '1000-1800' runs from 10:00 on the 5th to 18:00 on the 7th (not
    10-18 on each day). A time without a date bound on that side leaves that side open; a date
    without a time covers its whole day. Bounds are aware datetimes in `zone`; None = open.
    """
    low_day, high_day = parse_date_range(date_value)
    low_time, high_time = parse_time_range(time_value) if not is_universal(time_value) else (None, None)
    low = dt.datetime.combine(low_day, low_time or dt.time.min, tzinfo=zone) if low_day else None
    high = dt.datetime.combine(high_day, high_time or dt.time.max, tzinfo=zone) if high_day else None
    return low, high


def datetime_range_matches(stored: dt.datetime | None, date_value: str, time_value: str, zone: dt.tzinfo) -> bool:
    if stored is None:
        return False
    low, high = combined_datetime_range(date_value, time_value, zone)
    return (low is None or stored >= low) and (high is None or stored <= high)
