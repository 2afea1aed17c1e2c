-- The store's queries for assets (named blocks, see storage/sql/__init__.py).
--
-- The consumers of an asset are the active DAGs whose spec's asset_condition names its URI:
-- jsonb_path_query_array(spec, 'lax $.asset_condition.**.asset') is the expression that
-- dag_asset_condition_uris_idx indexes, so every query spells it exactly so.

-- name: upsert_assets
-- Known from their first event on; sorted, so that concurrent writers lock in one order.
INSERT INTO asset (uri)
SELECT DISTINCT uri FROM unnest($1::text[]) AS given (uri)
ORDER BY uri
ON CONFLICT (uri) DO NOTHING;

-- name: insert_asset_events
-- Events of tasks that succeeded (their outlets), and the queue rows of every DAG waiting on
-- them, in the commit's transaction. The assets exist (upsert_assets ran first).
WITH given AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::integer[])
        WITH ORDINALITY AS g (uri, extra, at, dag_id, task_id, run_id, map_index, position)
), inserted AS (
    INSERT INTO asset_event
        (asset_id, extra, "timestamp", source_dag_id, source_task_id, source_run_id, source_map_index)
    SELECT a.id, g.extra::jsonb, g.at, g.dag_id, g.task_id, g.run_id, g.map_index
    FROM given g
    JOIN asset a ON a.uri = g.uri
    ORDER BY g.position
    RETURNING id, asset_id, "timestamp"
)
INSERT INTO asset_dag_run_queue (target_dag_id, asset_event_id, asset_id, created_at)
SELECT d.dag_id, i.id, i.asset_id, i."timestamp"
FROM inserted i
JOIN asset a ON a.id = i.asset_id
JOIN dag d
    ON d.is_active
    AND jsonb_path_query_array(d.spec, 'lax $.asset_condition.**.asset') @> jsonb_build_array(a.uri);

-- name: insert_external_asset_event
-- One event from outside (the API, a webhook), unique on its idempotency key (NULL: none), and
-- the queue rows of every DAG waiting on it. No row: the key was seen before.
WITH inserted AS (
    INSERT INTO asset_event (asset_id, extra, "timestamp", idempotency_key)
    SELECT a.id, $2::jsonb, $3, $4 FROM asset a WHERE a.uri = $1
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, asset_id, "timestamp"
), queued AS (
    INSERT INTO asset_dag_run_queue (target_dag_id, asset_event_id, asset_id, created_at)
    SELECT d.dag_id, i.id, i.asset_id, i."timestamp"
    FROM inserted i
    JOIN dag d
        ON d.is_active
        AND jsonb_path_query_array(d.spec, 'lax $.asset_condition.**.asset') @> jsonb_build_array($1::text)
    RETURNING target_dag_id
)
SELECT i.id, ARRAY(SELECT target_dag_id FROM queued ORDER BY 1) AS queued_for FROM inserted i;

-- name: asset_event_by_idempotency_key
SELECT id FROM asset_event WHERE idempotency_key = $1;

-- name: asset_queue_of_dags
-- What each of these DAGs (when not paused) has queued, per asset: how many events, the last
-- event id, and the first and last event times.
SELECT q.target_dag_id, a.uri, count(*) AS events, max(q.asset_event_id) AS last_event_id,
    min(e."timestamp") AS first_at, max(e."timestamp") AS last_at
FROM asset_dag_run_queue q
JOIN dag d ON d.dag_id = q.target_dag_id
JOIN asset a ON a.id = q.asset_id
JOIN asset_event e ON e.id = q.asset_event_id
WHERE q.target_dag_id = ANY($1::text[]) AND NOT d.is_paused
GROUP BY q.target_dag_id, a.uri
ORDER BY q.target_dag_id, a.uri;

-- name: consume_asset_queue
-- The queue rows an asset-triggered run consumes: those of its DAG, of the assets its condition
-- names, up to the last event read. The caller checks that exactly the rows read were deleted.
-- Locked in event order first, so that two evaluators (replicas) of one DAG queue up behind each
-- other instead of deadlocking: the second finds the rows gone and deletes none of them.
WITH doomed AS (
    SELECT q.target_dag_id, q.asset_event_id
    FROM asset_dag_run_queue q
    JOIN asset a ON a.id = q.asset_id
    WHERE q.target_dag_id = $1 AND q.asset_event_id <= $2 AND a.uri = ANY($3::text[])
    ORDER BY q.asset_event_id
    FOR UPDATE OF q
)
DELETE FROM asset_dag_run_queue q
USING doomed d
WHERE q.target_dag_id = d.target_dag_id AND q.asset_event_id = d.asset_event_id
RETURNING q.asset_event_id;

-- name: delete_stale_asset_queue
-- Queue rows of assets the DAG's condition no longer names.
DELETE FROM asset_dag_run_queue q
USING asset a
WHERE q.target_dag_id = $1 AND a.id = q.asset_id AND a.uri <> ALL($2::text[]);

-- name: link_run_asset_events
INSERT INTO dag_run_asset_event (run_pk, asset_event_id)
SELECT $1, event_id FROM unnest($2::bigint[]) AS given (event_id);

-- name: asset_events_by_id
SELECT e.id, e.asset_id, a.uri, e.extra, e."timestamp", e.source_dag_id, e.source_task_id,
    e.source_run_id, e.source_map_index
FROM asset_event e
JOIN asset a ON a.id = e.asset_id
WHERE e.id = ANY($1::bigint[])
ORDER BY e.id;

-- name: triggering_asset_events_of_active_runs
-- The events behind every asset-triggered run not finished yet (recovery loads them).
SELECT l.run_pk, e.id, e.asset_id, a.uri, e.extra, e."timestamp", e.source_dag_id, e.source_task_id,
    e.source_run_id, e.source_map_index
FROM dag_run r
JOIN dag_run_asset_event l ON l.run_pk = r.pk
JOIN asset_event e ON e.id = l.asset_event_id
JOIN asset a ON a.id = e.asset_id
WHERE r.state IN ('queued', 'running') AND r.run_type = 'asset_triggered'
ORDER BY l.run_pk, e.id;

-- name: triggering_asset_events_of_runs
SELECT l.run_pk, e.id, e.asset_id, a.uri, e.extra, e."timestamp", e.source_dag_id, e.source_task_id,
    e.source_run_id, e.source_map_index
FROM dag_run_asset_event l
JOIN asset_event e ON e.id = l.asset_event_id
JOIN asset a ON a.id = e.asset_id
WHERE l.run_pk = ANY($1::bigint[])
ORDER BY l.run_pk, e.id;

-- name: list_assets
-- A page of assets by URI ($3: a LIKE pattern, or NULL for all), with their last update, the
-- active DAGs scheduled on them and the tasks that name them as outlets.
SELECT a.id, a.uri, a.created_at,
    (SELECT e."timestamp" FROM asset_event e WHERE e.asset_id = a.id ORDER BY e.id DESC LIMIT 1)
        AS updated_at,
    ARRAY(
        SELECT d.dag_id FROM dag d
        WHERE d.is_active
            AND jsonb_path_query_array(d.spec, 'lax $.asset_condition.**.asset') @> jsonb_build_array(a.uri)
        ORDER BY d.dag_id
    ) AS consuming_dags,
    ARRAY(
        SELECT jsonb_build_array(d.dag_id, t ->> 'task_id')
        FROM dag d, jsonb_array_elements(d.spec -> 'tasks') AS t
        WHERE d.is_active AND t -> 'outlets' @> jsonb_build_array(a.uri)
        ORDER BY d.dag_id, t ->> 'task_id'
    ) AS producing_tasks
FROM asset a
WHERE $3::text IS NULL OR a.uri LIKE $3
ORDER BY a.uri
LIMIT $1 OFFSET $2;

-- name: count_assets
SELECT count(*) FROM asset a WHERE $1::text IS NULL OR a.uri LIKE $1;

-- name: list_asset_events
-- A page of events ($3: of one asset URI, or NULL for all), oldest first unless $4, with the
-- runs each triggered.
SELECT e.id, e.asset_id, a.uri, e.extra, e."timestamp", e.source_dag_id, e.source_task_id,
    e.source_run_id, e.source_map_index,
    ARRAY(
        SELECT jsonb_build_array(r.dag_id, r.run_id)
        FROM dag_run_asset_event l JOIN dag_run r ON r.pk = l.run_pk
        WHERE l.asset_event_id = e.id
        ORDER BY r.pk
    ) AS created_dagruns
FROM asset_event e
JOIN asset a ON a.id = e.asset_id
WHERE $3::text IS NULL OR a.uri = $3
ORDER BY CASE WHEN $4 THEN -e.id ELSE e.id END
LIMIT $1 OFFSET $2;

-- name: count_asset_events
SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE $1::text IS NULL OR a.uri = $1;

-- name: get_asset_event
SELECT e.id, e.asset_id, a.uri, e.extra, e."timestamp", e.source_dag_id, e.source_task_id,
    e.source_run_id, e.source_map_index,
    ARRAY(
        SELECT jsonb_build_array(r.dag_id, r.run_id)
        FROM dag_run_asset_event l JOIN dag_run r ON r.pk = l.run_pk
        WHERE l.asset_event_id = e.id
        ORDER BY r.pk
    ) AS created_dagruns
FROM asset_event e
JOIN asset a ON a.id = e.asset_id
WHERE e.id = $1;
