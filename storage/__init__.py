"""The storage adapter: PostgreSQL state store, SQL files, migrations, embedded PostgreSQL.

The engine talks to `orchestrator.ports.StateStore`; this package is the one implementation of it
that touches a database, and the only place SQL lives.
"""
