"""The embedded Celery broker: kombu's SQLAlchemy transport, polled more often.

`make run` needs a broker without a server; kombu's SQLAlchemy transport keeps messages as
rows in a SQLite file (see settings.CELERY_BROKER_URL). Virtual transports poll, once a second
by default, which puts up to a second on every task hand-off (e.g. sign-off → ORU). The
polling interval cannot be passed as a transport option because this transport hands all its
options to SQLAlchemy's create_engine, so it is set on a subclass registered for `sqla+` URLs.
"""

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport

EMBEDDED_POLLING_SECONDS = 0.1


class EmbeddedTransport(Transport):
    polling_interval = EMBEDDED_POLLING_SECONDS


def register() -> None:
    TRANSPORT_ALIASES["sqla"] = "ris.broker:EmbeddedTransport"
    TRANSPORT_ALIASES["sqlalchemy"] = "ris.broker:EmbeddedTransport"
