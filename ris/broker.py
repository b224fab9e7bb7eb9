"""The embedded Celery broker: kombu's SQLAlchemy transport, polled more often.

`make run` needs a broker without a server; kombu's SQLAlchemy transport keeps messages as
rows in a SQLite file (see settings.CELERY_BROKER_URL). Virtual transports poll, once a second
by default, which puts up to a second on every task hand-off (e.g. sign-off → ORU). The
polling interval cannot be passed as a transport option because this transport hands all its
options to SQLAlchemy's create_engine, so it is set on a subclass registered for `sqla+` URLs.

The subclass is named by a string, so SQLAlchemy (~28 MB per process) is imported only by the
processes that use the embedded broker, never on RabbitMQ.
"""

from kombu.transport import TRANSPORT_ALIASES

EMBEDDED_TRANSPORT = "ris.embedded_transport:EmbeddedTransport"


def register() -> None:
    TRANSPORT_ALIASES["sqla"] = EMBEDDED_TRANSPORT
    TRANSPORT_ALIASES["sqlalchemy"] = EMBEDDED_TRANSPORT
