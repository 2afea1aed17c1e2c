-- Replicas and run ownership (storage/postgres_ownership.py; see migration 0009).
-- A daemon is alive while its lease holds by the database's clock: lease_until > now().

-- name: register_daemon
INSERT INTO daemon (daemon_id, hostname, pid, started_at, heartbeat_at, lease_until, version, api_url)
VALUES ($1, $2, $3, now(), now(), now() + make_interval(secs => $4), $5, NULL)
ON CONFLICT (daemon_id) DO UPDATE SET
    hostname = EXCLUDED.hostname,
    pid = EXCLUDED.pid,
    started_at = EXCLUDED.started_at,
    heartbeat_at = EXCLUDED.heartbeat_at,
    lease_until = EXCLUDED.lease_until,
    version = EXCLUDED.version,
    api_url = NULL;

-- name: set_daemon_api_url
UPDATE daemon SET api_url = $2 WHERE daemon_id = $1;

-- name: renew_lease
UPDATE daemon SET heartbeat_at = now(), lease_until = now() + make_interval(secs => $2)
WHERE daemon_id = $1
RETURNING daemon_id;

-- name: expire_daemon
UPDATE daemon SET lease_until = now() WHERE daemon_id = $1;

-- name: release_runs_of_daemon
-- A replica leaving hands its runs over (the triggers of migration 0009 wake the survivors).
UPDATE dag_run SET owner = NULL WHERE owner = $1 AND state IN ('queued', 'running');

-- name: deregister_daemon
DELETE FROM daemon WHERE daemon_id = $1;

-- name: list_daemons
SELECT d.daemon_id, d.hostname, d.pid, d.started_at, d.heartbeat_at, d.version, d.api_url,
       d.lease_until, d.lease_until > now() AS alive,
       extract(epoch FROM now() - d.heartbeat_at)::float8 AS heartbeat_age,
       (SELECT count(*) FROM dag_run AS r
        WHERE r.owner = d.daemon_id AND r.state IN ('queued', 'running'))::integer AS owned_runs
FROM daemon AS d
ORDER BY d.started_at, d.daemon_id;

-- name: lock_dag_for_admission
-- Admission is serialised per DAG on the DAG's row: two replicas never both take its last free
-- run slot (the count of its running runs is made by admit_queued_runs, a statement that starts
-- once this lock is held and so sees what the previous holder committed).
SELECT is_paused, coalesce(max_active_runs, 16) AS max_active_runs
FROM dag
WHERE dag_id = $1
FOR UPDATE;

-- name: admit_queued_runs
-- The oldest waiting runs that no live replica holds, started and owned by $2: at most $3, and
-- no more than the DAG's free run slots ($5 less its running runs, whoever drives them). Runs a
-- replica is writing meanwhile are skipped, not waited for; so are those of $4, which a user is
-- changing on this replica.
WITH picked AS (
    SELECT r.pk FROM dag_run AS r
    WHERE r.dag_id = $1 AND r.state = 'queued' AND r.pk <> ALL($4::bigint[])
      AND (r.owner IS NULL OR r.owner = $2
           OR NOT EXISTS (SELECT 1 FROM daemon AS d WHERE d.daemon_id = r.owner AND d.lease_until > now()))
    ORDER BY r.queued_at, r.pk
    LIMIT least($3::integer, greatest(
        $5::integer - (SELECT count(*) FROM dag_run AS x WHERE x.dag_id = $1 AND x.state = 'running'), 0))
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE dag_run AS r SET state = 'running', owner = $2, start_date = coalesce(r.start_date, now())
FROM picked
WHERE r.pk = picked.pk
RETURNING r.pk;

-- name: dags_with_waiting_runs
SELECT DISTINCT r.dag_id FROM dag_run AS r
WHERE r.state = 'queued'
  AND (r.owner IS NULL OR r.owner = $1
       OR NOT EXISTS (SELECT 1 FROM daemon AS d WHERE d.daemon_id = r.owner AND d.lease_until > now()))
ORDER BY r.dag_id;

-- name: claim_own_runs
-- This replica's own running runs that it does not hold ($2 lists those it holds): after a
-- restart with the same daemon_id, or after it let its runs go when it lost its lease.
UPDATE dag_run AS r SET owner = $1
WHERE r.state = 'running' AND r.owner = $1 AND r.pk <> ALL($2::bigint[])
RETURNING r.pk;

-- name: claim_orphaned_runs
-- Running runs nobody drives: released ones (no owner) and, when $3, those of replicas whose
-- lease ran out. At most $2, and at most this replica's fair share: the running runs divided
-- by the live replicas (rounded up), less those it owns. The shares of the live replicas add up
-- to at least the runs nobody drives, so every such run has room with some replica.
WITH share AS (
    SELECT greatest(
        ceil((SELECT count(*) FROM dag_run WHERE state = 'running')::numeric
             / greatest((SELECT count(*) FROM daemon WHERE lease_until > now()), 1))
        - (SELECT count(*) FROM dag_run WHERE state = 'running' AND owner = $1),
        0)::integer AS n
), picked AS (
    SELECT r.pk FROM dag_run AS r
    WHERE r.state = 'running'
      AND (r.owner IS NULL
           OR ($3 AND r.owner <> $1 AND NOT EXISTS (
               SELECT 1 FROM daemon AS d WHERE d.daemon_id = r.owner AND d.lease_until > now())))
    ORDER BY r.queued_at, r.pk
    LIMIT least($2, (SELECT n FROM share))
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE dag_run AS r SET owner = $1
FROM picked
WHERE r.pk = picked.pk
RETURNING r.pk;

-- name: claim_run
-- An operation on a run no live replica drives: finished, waiting, or its owner's lease ran out.
UPDATE dag_run AS r SET owner = $1
WHERE r.pk = $2
  AND (r.owner IS NULL OR r.owner = $1 OR r.state NOT IN ('queued', 'running')
       OR NOT EXISTS (SELECT 1 FROM daemon AS d WHERE d.daemon_id = r.owner AND d.lease_until > now()))
RETURNING r.pk;

-- name: run_owner
-- The live replica other than $2 that owns the run, if any.
SELECT d.daemon_id, d.hostname, d.api_url
FROM dag_run AS r
JOIN daemon AS d ON d.daemon_id = r.owner
WHERE r.pk = $1 AND r.owner <> $2 AND d.lease_until > now();

-- name: owned_runs
SELECT pk FROM dag_run WHERE pk = ANY($2::bigint[]) AND owner = $1;

-- name: list_runs_by_pk
-- The runs a replica just claimed, read in the claim's transaction.
SELECT pk, dag_id, run_id, state, run_type, conf, logical_date, data_interval_start,
       data_interval_end, queued_at, start_date, end_date, external_trigger, note, backfill_id
FROM dag_run
WHERE pk = ANY($1::bigint[])
ORDER BY queued_at, pk;
