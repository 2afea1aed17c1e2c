-- The replicas' shared secret (storage/postgres_replicas.py): signs the requests one replica
-- forwards to another (orchestrator/api/replica_auth.py).

-- name: ensure_replica_secret
-- The first replica's random value wins; every later call returns it.
WITH inserted AS (
    INSERT INTO replica_secret (secret) VALUES ($1)
    ON CONFLICT (singleton) DO NOTHING
    RETURNING secret
)
SELECT secret FROM inserted
UNION ALL
SELECT secret FROM replica_secret
LIMIT 1;
