"""The pure core: DAG model, states, resolver, retry math, templating.

Nothing in this package does I/O, reads the clock or imports asyncio, asyncpg,
aiohttp or kubernetes: time and ids are arguments. That keeps every rule of
the scheduler testable with plain tables of cases (import-linter checks it).
"""
