"""Triggers: what creates runs besides a person — the cron timer heap and backfills
(`scheduler`, `backfill`), webhooks (`webhooks`) and asset events (`assets`).

Triggers sit beside the API, above the engine: they create runs through the engine
(`Engine.create_run`) and read and write durable state only through the ports, never an
adapter; the composition root (`orchestrator.daemon`) builds them from the configuration.
"""
