"""The unit tier's fixtures. The tier does no I/O: no database, no Redis, no
network, no child process (tests/unit/test_unit_tier.py runs it under
tests/support/no_io.py). A fixture here may build values and read files of the
repository, nothing more; the service tiers' fixtures are in
tests/support/database.py and are never asked for from here."""
