"""kombu's SQLAlchemy transport with a shorter polling interval (see ris.broker)."""

from kombu.transport.sqlalchemy import Transport

EMBEDDED_POLLING_SECONDS = 0.1


class EmbeddedTransport(Transport):
    polling_interval = EMBEDDED_POLLING_SECONDS
