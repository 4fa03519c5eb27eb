"""Development tools: the embedded PostgreSQL and Redis (``devtools.services``)
and the helpers for service processes and throw-away databases that the tests
and the benchmarks share (``devtools.processes``). Not part of the service."""
