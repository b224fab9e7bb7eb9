"""Celery tasks of results out, found by autodiscovery: the generic outbox delivery and sweep."""

from ris.outbox import deliver, sweep

__all__ = ["deliver", "sweep"]
