"""PS3.4 C.2.2.2 matching rules, one table per matching type (worklist.matching, no database)."""

import datetime as dt
import zoneinfo

import pytest

from worklist import matching

ZONE = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")


@pytest.mark.parametrize("value", [None, "", "*"])
def test_zero_length_or_lone_asterisk_is_universal(value):
    assert matching.is_universal(value)


@pytest.mark.parametrize("value", ["A*", "?", "CT", "**A"])
def test_other_values_are_not_universal(value):
    assert not matching.is_universal(value)


@pytest.mark.parametrize(
    "stored, query, expected",
    [
        ("CT", "CT", True),
        ("CT", "ct", False),  # single value matching is case-sensitive (C.2.2.2.1)
        ("CT", "C", False),
        ("", "CT", False),  # a zero-length stored value never matches a non-universal key
    ],
)
def test_single_value_matching_is_exact_and_case_sensitive(stored, query, expected):
    assert matching.single_value_matches(stored, query) is expected


@pytest.mark.parametrize(
    "stored, query, expected",
    [
        ("Nguyễn^Văn", "NGUYEN^VAN", True),
        ("Müller^Jürgen", "muller^jurgen", True),
        ("Đặng^Thị", "DANG^THI", True),
        ("Nguyễn^Văn", "NGUYEN", False),
    ],
)
def test_folded_person_name_ignores_case_and_accents(stored, query, expected):
    assert matching.single_value_matches(stored, query, fold=True) is expected


@pytest.mark.parametrize(
    "stored, pattern, expected",
    [
        # PS3.4 C.2.2.2.4: '*' any sequence of characters (including none), '?' exactly one
        ("SMITH^JOHN", "SMITH*", True),
        ("SMITH", "SMITH*", True),
        ("SMYTH^JOHN", "SM?TH*", True),
        ("SMTH", "SM?TH*", False),
        ("ACC001", "ACC00?", True),
        ("ACC0010", "ACC00?", False),
        ("acc001", "ACC*", False),  # case-sensitive outside PN
        ("A.B+C", "A.B+*", True),  # regex characters are literal
        ("", "*A*", False),
    ],
)
def test_wildcard_matching(stored, pattern, expected):
    assert matching.wildcard_matches(stored, pattern) is expected


def test_folded_wildcard_matches_vietnamese_names_without_diacritics():
    assert matching.wildcard_matches("Nguyễn^Thị Minh^Khai", "nguy*^THI*", fold=True)


@pytest.mark.parametrize("vr, expected", [("PN", True), ("LO", True), ("CS", True), ("DA", False), ("UI", False)])
def test_asterisk_is_a_wildcard_only_in_string_vrs(vr, expected):
    assert matching.has_wildcard("A*", vr) is expected


@pytest.mark.parametrize(
    "pattern, glob, like",
    [
        ("AB*", "AB*", "AB%"),
        ("A?C", "A?C", "A_C"),
        ("50%_[x]*", "50%_[[]x]*", "50\\%\\_[x]%"),
    ],
)
def test_wildcards_translate_to_sql_patterns_with_literals_escaped(pattern, glob, like):
    assert matching.wildcard_to_glob(pattern) == glob
    assert matching.wildcard_to_like(pattern) == like


@pytest.mark.parametrize(
    "stored, query, expected",
    [
        # PS3.4 C.2.2.2.5: "d1-d2" inclusive, "-d2" on or before, "d1-" on or after
        (dt.date(2006, 7, 5), "20060705", True),
        (dt.date(2006, 7, 6), "20060705-20060707", True),
        (dt.date(2006, 7, 7), "20060705-20060707", True),
        (dt.date(2006, 7, 8), "20060705-20060707", False),
        (dt.date(1999, 1, 1), "-20060707", True),
        (dt.date(2006, 7, 8), "-20060707", False),
        (dt.date(2030, 1, 1), "20060705-", True),
        (dt.date(2006, 7, 4), "20060705-", False),
        (None, "20060705-", False),
    ],
)
def test_date_range_matching(stored, query, expected):
    assert matching.date_range_matches(stored, query) is expected


@pytest.mark.parametrize(
    "stored, query, expected",
    [
        (dt.time(10, 0), "1000-1800", True),
        (dt.time(18, 0, 30), "1000-1800", True),  # an upper bound of precision HHMM covers its minute
        (dt.time(18, 1), "1000-1800", False),
        (dt.time(9, 59, 59), "1000-", False),
        (dt.time(7, 0), "-0800", True),
        (dt.time(10, 30), "10", True),  # a single TM of precision HH matches that hour
        (dt.time(11, 0), "10", False),
        (dt.time(10, 15, 30, 500000), "101530.5", True),
    ],
)
def test_time_range_matching(stored, query, expected):
    assert matching.time_range_matches(stored, query) is expected


@pytest.mark.parametrize(
    "stored, expected",
    [
        # PS3.4 C.2.2.2.5.1: date "20060705-20060707" + time "1000-1800" is ONE range,
        # 10:00 on July 5th to 18:00 on July 7th, not 10-18 on each day
        (dt.datetime(2006, 7, 5, 9, 59, tzinfo=ZONE), False),
        (dt.datetime(2006, 7, 5, 10, 0, tzinfo=ZONE), True),
        (dt.datetime(2006, 7, 6, 3, 0, tzinfo=ZONE), True),
        (dt.datetime(2006, 7, 6, 22, 0, tzinfo=ZONE), True),
        (dt.datetime(2006, 7, 7, 18, 0, tzinfo=ZONE), True),
        (dt.datetime(2006, 7, 7, 18, 30, tzinfo=ZONE), False),
    ],
)
def test_combined_date_time_range_crosses_days(stored, expected):
    assert matching.datetime_range_matches(stored, "20060705-20060707", "1000-1800", ZONE) is expected


def test_combined_range_is_read_in_the_site_time_zone():
    low, high = matching.combined_datetime_range("20250101", "", ZONE)
    assert low == dt.datetime(2025, 1, 1, tzinfo=ZONE)
    assert high.astimezone(dt.UTC) == dt.datetime(2025, 1, 1, 16, 59, 59, 999999, tzinfo=dt.UTC)


def test_single_date_with_time_range_is_that_day_only():
    assert matching.datetime_range_matches(dt.datetime(2025, 1, 1, 12, tzinfo=ZONE), "20250101", "1000-1400", ZONE)
    assert not matching.datetime_range_matches(dt.datetime(2025, 1, 2, 12, tzinfo=ZONE), "20250101", "1000-1400", ZONE)


@pytest.mark.parametrize(
    "value",
    ["2025.01.01", "20251301", "20250101-20241231", "-", "2025-01-01", "20250101-20250102-20250103", "2025*"],
)
def test_invalid_dates_are_refused(value):
    with pytest.raises(matching.InvalidMatchingValue):
        matching.parse_date_range(value)


@pytest.mark.parametrize("value", ["25:00", "10:00", "1800-1000", "1a", "2400"])
def test_invalid_times_are_refused_and_time_ranges_never_cross_midnight(value):
    with pytest.raises(matching.InvalidMatchingValue):
        matching.parse_time_range(value)


@pytest.mark.parametrize(
    "stored, query, expected",
    [
        ("1.2.3", "1.2.3", True),
        ("1.2.4", "1.2.3\\1.2.4\\1.2.5", True),  # C.2.2.2.2 list of UID matching
        ("1.2.6", "1.2.3\\1.2.4", False),
        ("", "1.2.3", False),
    ],
)
def test_list_of_uid_matching(stored, query, expected):
    assert matching.uid_list_matches(stored, query) is expected


@pytest.mark.parametrize("value", ["1.2.*", "1..2", "01.2", "abc", "1.2\\x"])
def test_malformed_uids_are_refused(value):
    with pytest.raises(matching.InvalidMatchingValue):
        matching.parse_uid_list(value)


def test_person_name_uses_alphabetic_group_only():
    assert matching.fold_pn("Yamada^Tarou=山田^太郎=やまだ^たろう") == "YAMADA^TAROU"
    assert matching.alphabetic_group("DOE^JOHN^^^") == "DOE^JOHN"
