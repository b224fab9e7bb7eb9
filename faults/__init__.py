"""Fault-injection suite (issue 9): load generators, faults and the checks that prove nothing
was lost. `make faults` runs tests/test_faults.py in full on PostgreSQL + RabbitMQ
(FAULTS_FULL=1); `make test` runs a shorter variant. Each scenario drives the real stack
(runmllp, rundicom, a Celery worker with beat) through real sockets while one fault is injected.
"""
