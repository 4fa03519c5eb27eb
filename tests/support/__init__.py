"""Test helpers, imported by the tests (never from a ``conftest``).

- ``common``: ``ROOT``, ``wait_until`` (poll a condition, never sleep a fixed
  time) and ``redis_conn`` (the tests' own Redis database).
- ``database``: the service tiers' shared fixtures (the migrated test
  database, a clean ``engine`` per test, ``settings``, ``tenant``), registered
  by tests/conftest.py as a plugin.
- ``attempt_log``: the insert-attempt log, seen by the database itself.
- ``factories``: timers made straight through the repository.
- ``actions``: an action that counts its calls, and a trigger that poisons rows.
- ``api``: a Flask test client that sends one tenant's key, and problem
  assertions.
- ``outage_proxy``: a TCP proxy that can be switched off (outage tests).
- ``no_io``: the plugin that proves the unit tier does no I/O.
- ``schemathesis_hooks``: keeps generated cases within the document's
  ``x-constraints`` (the slow tier's fuzz run and the document test).

Each module imports the service's modules lazily or only where a test needs
them: tests/conftest.py must point ``DATABASE_URL`` at the test database before
anything reads the settings.
"""
