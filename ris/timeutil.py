"""Local time of the site (RIS_TIME_ZONE): HL7 and DICOM carry times without a zone."""

import datetime as dt
import zoneinfo

from django.conf import settings


def site_zone() -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(settings.RIS_TIME_ZONE)


def local_day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a calendar day at the site, as aware datetimes."""
    start = dt.datetime.combine(day, dt.time.min, tzinfo=site_zone())
    return start, dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min, tzinfo=site_zone())


def to_local(moment: dt.datetime | None) -> dt.datetime | None:
    return moment.astimezone(site_zone()) if moment is not None else None
