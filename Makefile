# The README's commands. `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-postgres lint bench bench-quick clean faults fuzz

install: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py runris

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: install
	$(PY) bench/run.py --quick $(BENCH_ARGS)

clean:
	rm -rf var/*.sqlite3* var/celerybeat-schedule* .pytest_cache

# Issue 9: the fault-injection suite in full against PostgreSQL + RabbitMQ (prints the table).
FAULTS_ENV ?= DATABASE_URL=postgres://postgres@127.0.0.1:5432/ris CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672//
faults: install
	$(FAULTS_ENV) FAULTS_FULL=1 $(PY) -m pytest tests/test_faults.py -s -p no:warnings $(PYTEST_ARGS)

# Issue 9: the fuzzers at full count (10 000 HL7 frames on the live MLLP listener, ≈ 1 500 malformed DICOM requests).
fuzz: install
	FUZZ_FULL=1 $(PY) -m pytest tests/test_fuzz_hl7.py tests/test_fuzz_dicom.py -p no:warnings $(PYTEST_ARGS)
