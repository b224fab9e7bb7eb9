"""Settings for the RIS, read from the environment in one place.

The variables and their defaults are the outside contract (shared/design/contract.md):
with nothing set, the RIS runs on the embedded default (SQLite + a serverless Celery
broker); production sets DATABASE_URL=postgres://... and CELERY_BROKER_URL=amqp://...
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    return env(name, "1" if default else "0").strip().lower() in ("1", "true", "yes", "on")


def env_int(name: str, default: int) -> int:
    return int(env(name, str(default)))


def sqlite_path(url: str) -> str:
    """The file of a sqlite:/// URL; relative paths are relative to the checkout. Its folder is
    created if missing, so a fresh checkout runs without a set-up step."""
    name = url.split("sqlite:///", 1)[1]
    path = Path(name) if os.path.isabs(name) else BASE_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


# --- Core Django -------------------------------------------------------------

SECRET_KEY = env("RIS_SECRET_KEY", "django-insecure-development-key-set-RIS_SECRET_KEY-in-production")
DEBUG = env_bool("RIS_DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in env("RIS_ALLOWED_HOSTS", "*").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in env("RIS_CSRF_TRUSTED_ORIGINS").split(",") if o.strip()]

# RIS_HTTPS=1: the web UI is served through a TLS reverse proxy that sets X-Forwarded-Proto.
# Cookies become secure-only, plain HTTP is redirected (except /healthz, for load balancers),
# and browsers are told to use HTTPS only (HSTS).
RIS_HTTPS = env_bool("RIS_HTTPS", False)
if RIS_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("RIS_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("RIS_HSTS_INCLUDE_SUBDOMAINS", False)
    # Subdomain HSTS and preload lists bind the whole hospital domain, where devices often speak
    # plain HTTP: a site decision (RIS_HSTS_INCLUDE_SUBDOMAINS), not a default of ours.
    SILENCED_SYSTEM_CHECKS = ["security.W005", "security.W021"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "ris",
    "worklist",
    "hl7",
    "reports",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "ris.urls"
WSGI_APPLICATION = "ris.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------

DATABASE_URL = env("DATABASE_URL", "sqlite:///var/ris.sqlite3")
if DATABASE_URL.startswith("sqlite:///"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": sqlite_path(DATABASE_URL),
            "OPTIONS": {
                # Several processes (web, MLLP, DICOM, worker) write at once: WAL lets readers
                # go on while one writes, IMMEDIATE takes the write lock at BEGIN (no upgrade
                # deadlocks) and the timeout makes writers queue instead of failing.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            # One test database per test run, so parallel runs on one machine do not collide.
            "TEST": {"NAME": str(VAR_DIR / f"test-ris-{os.getpid()}.sqlite3")},
        }
    }
else:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth, i18n, static --------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/admin/login/"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("vi", "Tiếng Việt")]
USE_I18N = True
USE_TZ = True
TIME_ZONE = "UTC"  # storage is UTC; RIS_TIME_ZONE is the zone of HL7/DICOM local times
RIS_TIME_ZONE = env("RIS_TIME_ZONE", "UTC")

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    # Token first, so an anonymous API call is told 401 with WWW-Authenticate: Token.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["ris.roles.ReadsPatientData"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

# --- Listeners (contract) --------------------------------------------------------

RIS_BIND = env("RIS_BIND", "127.0.0.1")
RIS_HTTP_PORT = env_int("RIS_HTTP_PORT", 8000)
RIS_MLLP_PORT = env_int("RIS_MLLP_PORT", 2575)
RIS_DICOM_PORT = env_int("RIS_DICOM_PORT", 11112)
RIS_AE_TITLE = env("RIS_AE_TITLE", "RIS")
RIS_DICOM_ALLOW_ANY_AE = env_bool("RIS_DICOM_ALLOW_ANY_AE", False)
RIS_DICOM_MAX_ASSOCIATIONS = env_int("RIS_DICOM_MAX_ASSOCIATIONS", 32)
# Days the DICOM association log (interfaces page) keeps its rows.
RIS_DICOM_ASSOCIATION_LOG_DAYS = env_int("RIS_DICOM_ASSOCIATION_LOG_DAYS", 30)
RIS_STORAGE_DIR = Path(env("RIS_STORAGE_DIR", "var/dicom"))
if not RIS_STORAGE_DIR.is_absolute():
    RIS_STORAGE_DIR = BASE_DIR / RIS_STORAGE_DIR
RIS_HIS_MLLP = env("RIS_HIS_MLLP")
RIS_FHIR_BASE_URL = env("RIS_FHIR_BASE_URL")
RIS_REPORT_OUTPUT = env("RIS_REPORT_OUTPUT", "oru")
RIS_PACS = env("RIS_PACS")
# "AET@host:port" of an MPPS SCP (the Image Manager) that gets a copy of every MPPS accepted.
RIS_MPPS_FORWARD = env("RIS_MPPS_FORWARD")
RIS_ARRIVAL_QUIET_SECONDS = env_int("RIS_ARRIVAL_QUIET_SECONDS", 5)
RIS_MLLP_MAX_FRAME_BYTES = env_int("RIS_MLLP_MAX_FRAME_BYTES", 1024 * 1024)
RIS_MLLP_IDLE_TIMEOUT = env_int("RIS_MLLP_IDLE_TIMEOUT", 300)

# Identifiers the RIS assigns when an order does not carry them.
RIS_ACCESSION_PREFIX = env("RIS_ACCESSION_PREFIX", "A")
RIS_UID_ROOT = env("RIS_UID_ROOT", "1.2.826.0.1.3680043.10.1451")  # override with the site's own OID root
RIS_FACILITY = env("RIS_FACILITY", "RAD")

# --- Celery ----------------------------------------------------------------------

# The embedded broker is kombu's SQLAlchemy transport on its own SQLite file: no server,
# messages are rows that survive a restart, and a separate worker process consumes them.
CELERY_BROKER_URL = env("CELERY_BROKER_URL") or f"sqla+sqlite:///{sqlite_path('sqlite:///var/celery-broker.sqlite3')}"
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {"connect_args": {"timeout": 30}} if CELERY_BROKER_URL.startswith("sqla+sqlite") else {}
)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = env("RIS_CELERY_QUEUE", "ris")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "worker-heartbeat": {"task": "ris.tasks.heartbeat", "schedule": 30.0},
}

# --- Process counts of `manage.py runris` (docs/deployment.md, "Sizing") -----------------
# Each process holds ~60-80 MB. One web process with threads serves a small department (its
# pages wait on the database, not the CPU); give RIS_WEB_WORKERS one per core for more users.
RIS_WEB_WORKERS = env_int("RIS_WEB_WORKERS", 1)
RIS_WEB_THREADS = env_int("RIS_WEB_THREADS", 8)
# Celery tasks wait on the network (HIS, FHIR server, PACS) and the database: threads in one
# process by default; "prefork" runs each in a child process instead.
RIS_WORKER_POOL = env("RIS_WORKER_POOL", "threads")
RIS_WORKER_CONCURRENCY = env_int("RIS_WORKER_CONCURRENCY", 4)

# --- Logging ----------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("RIS_LOG_LEVEL", "INFO")},
    "loggers": {
        "pynetdicom": {"level": "WARNING"},
        "django.db.backends": {"level": "WARNING"},
    },
}

# --- Web UI (issue 7) ------------------------------------------------------------

import datetime as _dt  # noqa: E402

INSTALLED_APPS += ["web", "axes"]
# Local times everywhere in the UI; idle sessions end; axes answers locked-out logins (last).
MIDDLEWARE += [
    "web.middleware.SiteTimeZoneMiddleware",
    "web.middleware.IdleTimeoutMiddleware",
    "axes.middleware.AxesMiddleware",
]
# Axes only counts and refuses; ModelBackend authenticates.
AUTHENTICATION_BACKENDS = ["web.auth.ThrottledLoginBackend", "django.contrib.auth.backends.ModelBackend"]
TEMPLATES[0]["OPTIONS"]["context_processors"] += [
    "django.template.context_processors.i18n",
    "web.context.navigation",
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
LOCALE_PATHS = [BASE_DIR / "web" / "locale"]
# A session lasts at most a shift and ends after RIS_SESSION_IDLE_SECONDS without a click.
SESSION_COOKIE_AGE = env_int("RIS_SESSION_MAX_SECONDS", 12 * 3600)
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True  # htmx takes the token from the page, not the cookie
RIS_SESSION_IDLE_SECONDS = env_int("RIS_SESSION_IDLE_SECONDS", 30 * 60)
RIS_UI_POLL_SECONDS = env_int("RIS_UI_POLL_SECONDS", 5)
# Login throttling (django-axes): RIS_LOGIN_FAILURE_LIMIT failures of one user name from one
# address lock that pair out for RIS_LOGIN_COOLOFF_MINUTES.
AXES_FAILURE_LIMIT = env_int("RIS_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = _dt.timedelta(minutes=env_int("RIS_LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "web/locked_out.html"
AXES_VERBOSE = False

# --- Modality Worklist (issue 4) ---------------------------------------------------

# Step statuses a worklist query can see (SCHEDULED always; add ARRIVED,STARTED if consoles
# should still see steps after arrival or start).
RIS_MWL_VISIBLE_STATUSES = [s.strip().upper() for s in env("RIS_MWL_VISIBLE_STATUSES", "SCHEDULED").split(",")]
# Patient's Name matching: "fold" = case- and accent-insensitive (Nguyen matches Nguyễn),
# "exact" = case- and accent-sensitive literal matching (PS3.4 C.2.2.2.1 leaves PN to us).
RIS_MWL_PN_MATCHING = env("RIS_MWL_PN_MATCHING", "fold").strip().lower()

# --- HL7 inbound over MLLP (issue 3) ---------------------------------------------------

# How to decode a message whose MSH-18 is empty (a sender profile may say otherwise):
# ASCII, 8859/1 or UNICODE UTF-8. UTF-8 reads plain ASCII unchanged.
RIS_HL7_DEFAULT_CHARSET = env("RIS_HL7_DEFAULT_CHARSET", "UNICODE UTF-8")
# A frame started but not finished within this many seconds closes the connection.
RIS_MLLP_FRAME_TIMEOUT = env_int("RIS_MLLP_FRAME_TIMEOUT", 30)
# More open connections than this are closed at once (each one holds a thread).
RIS_MLLP_MAX_CONNECTIONS = env_int("RIS_MLLP_MAX_CONNECTIONS", 256)
# Comma-separated addresses or networks (CIDR) allowed to connect; empty = anyone.
RIS_MLLP_ALLOWED_PEERS = [p.strip() for p in env("RIS_MLLP_ALLOWED_PEERS").split(",") if p.strip()]
# Accept HL7 only from senders (MSH-3 sending application, MSH-4 facility) that have a sender
# profile; a profile's allowed_peers binds the sender to its addresses. Others are answered AR.
RIS_HL7_KNOWN_SENDERS_ONLY = env_bool("RIS_HL7_KNOWN_SENDERS_ONLY", False)
# MLLP over TLS when both are set (PEM files).
RIS_MLLP_TLS_CERT = env("RIS_MLLP_TLS_CERT")
RIS_MLLP_TLS_KEY = env("RIS_MLLP_TLS_KEY")
# Listener processes sharing RIS_MLLP_PORT (SO_REUSEPORT); more than 1 uses more cores.
RIS_MLLP_PROCESSES = env_int("RIS_MLLP_PROCESSES", 1)

# --- Reports and results out (issue 6) -------------------------------------------------

# ORU^R01 to RIS_HIS_MLLP: HL7 version 2.5.1 (or 2.3.1), report text as TX lines or one FT block.
RIS_ORU_VERSION = env("RIS_ORU_VERSION", "2.5.1")
RIS_ORU_TEXT_TYPE = env("RIS_ORU_TEXT_TYPE", "TX")
# MSH-5/6 of outbound messages when the order did not come from an HL7 sender.
RIS_HIS_APPLICATION = env("RIS_HIS_APPLICATION", "HIS")
RIS_HIS_FACILITY = env("RIS_HIS_FACILITY", "")
# Seconds to wait for the HIS ACK / the FHIR server's answer.
RIS_OUTBOX_ACK_TIMEOUT = float(env("RIS_OUTBOX_ACK_TIMEOUT", "30"))
RIS_FHIR_TIMEOUT = float(env("RIS_FHIR_TIMEOUT", "30"))
# Outbox retries: base * 2^(n-1) seconds, at most MAX; parked as FAILED after MAX_ATTEMPTS.
RIS_OUTBOX_RETRY_BASE_SECONDS = float(env("RIS_OUTBOX_RETRY_BASE_SECONDS", "5"))
RIS_OUTBOX_RETRY_MAX_SECONDS = float(env("RIS_OUTBOX_RETRY_MAX_SECONDS", "600"))
RIS_OUTBOX_MAX_ATTEMPTS = env_int("RIS_OUTBOX_MAX_ATTEMPTS", 20)
RIS_OUTBOX_SWEEP_SECONDS = float(env("RIS_OUTBOX_SWEEP_SECONDS", "30"))
CELERY_BEAT_SCHEDULE["outbox-sweep"] = {"task": "ris.outbox.sweep", "schedule": RIS_OUTBOX_SWEEP_SECONDS}
# FHIR: identifier systems for ids without an OID issuer, the DICOMweb (WADO-RS) base URL that
# becomes ImagingStudy's Endpoint, and optional profiles for meta.profile ("Patient=url,...").
RIS_FHIR_SYSTEM_BASE = env("RIS_FHIR_SYSTEM_BASE", "urn:ris:" + RIS_FACILITY.lower()).rstrip("/")
RIS_DICOMWEB_BASE_URL = env("RIS_DICOMWEB_BASE_URL")
RIS_FHIR_PROFILES = dict(p.strip().split("=", 1) for p in env("RIS_FHIR_PROFILES").split(",") if "=" in p)

# --- Exam tracking: MPPS, arrivals, completeness, status to the HIS (issue 5) -------------
# Instances an MPPS lists that are still missing this long after it completed put the exam on
# the QA list ("images missing"); the sweep re-checks completed exams every SWEEP seconds.
RIS_ARRIVAL_MISSING_TIMEOUT_SECONDS = float(env("RIS_ARRIVAL_MISSING_TIMEOUT_SECONDS", "1800"))
RIS_ARRIVAL_SWEEP_SECONDS = float(env("RIS_ARRIVAL_SWEEP_SECONDS", "60"))
CELERY_BEAT_SCHEDULE["arrival-sweep"] = {"task": "worklist.tasks.sweep_arrivals", "schedule": RIS_ARRIVAL_SWEEP_SECONDS}
# ORC-5 order statuses sent to the HIS as ORM^O01 (RAD-3): IP started, CM completed, DC discontinued.
# Empty sends none; nothing is sent at all unless RIS_HIS_MLLP is set.
RIS_HIS_STATUS_UPDATES = env("RIS_HIS_STATUS_UPDATES", "IP,CM,DC")
# ORC-1 of those messages: SC (status changed, RAD-3 to the order placer) or XO (RAD-13 style).
RIS_HIS_STATUS_ORDER_CONTROL = env("RIS_HIS_STATUS_ORDER_CONTROL", "SC")
RIS_HIS_STATUS_VERSION = env("RIS_HIS_STATUS_VERSION", "2.3.1")
# Orders placed in the web UI go to the HIS as ORM^O01 SN (RAD-3 filler order), with RIS_HIS_MLLP.
RIS_HIS_FILLER_ORDERS = env_bool("RIS_HIS_FILLER_ORDERS", True)
# Countdown (ETA) tasks (the completeness re-check after the quiet period, outbox retries) wait
# inside the worker unacknowledged. RabbitMQ raises the prefetch window for them; kombu's virtual
# transports (the embedded SQLAlchemy broker) do not, so with a window of 1 per process two
# waiting checks stall the worker (measured: scan-to-ready p50 7 s instead of 0.2 s for 20 exams).
if CELERY_BROKER_URL.startswith("sqla+"):
    CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("RIS_EMBEDDED_PREFETCH_MULTIPLIER", 16)
# Completeness checks have a queue of their own ("<default>.arrival"), consumed by every worker
# with the default one: a check waits for a free worker slot, not behind a backlog of outbox
# deliveries (docs/conformance/dicom.md, "Completeness": what was measured).
from kombu import Queue  # noqa: E402

RIS_ARRIVAL_QUEUE_SUFFIX = ".arrival"
CELERY_TASK_QUEUES = (Queue(CELERY_TASK_DEFAULT_QUEUE), Queue(CELERY_TASK_DEFAULT_QUEUE + RIS_ARRIVAL_QUEUE_SUFFIX))

# --- Security: DICOM TLS, audit syslog (issue 9) ------------------------------------------
# DICOM over TLS (PS3.15 B.1 Secure Transport Connection Profile): both set turns TLS on for the
# whole SCP port. With a CA file, modalities must present a certificate signed by it.
RIS_DICOM_TLS_CERT = env("RIS_DICOM_TLS_CERT")
RIS_DICOM_TLS_KEY = env("RIS_DICOM_TLS_KEY")
RIS_DICOM_TLS_CA = env("RIS_DICOM_TLS_CA")
# host:port of an RFC 5424 syslog collector (UDP) that receives every audit event; unset: none.
RIS_AUDIT_SYSLOG = env("RIS_AUDIT_SYSLOG")
INSTALLED_APPS += ["audit"]
MIDDLEWARE += ["audit.middleware.PatientDataAccessMiddleware"]
