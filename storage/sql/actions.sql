-- Queries of the API's operations on runs and DAGs (storage/postgres_actions.py): what to clear,
-- and deletions. State changes are not here: they are whole rows committed by the engine's writer.

-- name: list_runs_for_clear
-- One run by id ($2), or every run of the DAG whose logical date is within [$3, $4] (NULL: open).
SELECT pk, dag_id, run_id, state, run_type, conf, logical_date, data_interval_start,
       data_interval_end, queued_at, start_date, end_date, external_trigger, note, backfill_id
FROM dag_run
WHERE dag_id = $1
  AND ($2::text IS NULL OR run_id = $2)
  AND ($3::timestamptz IS NULL OR logical_date >= $3)
  AND ($4::timestamptz IS NULL OR logical_date <= $4)
ORDER BY logical_date, pk;

-- name: delete_finished_run
-- Task instances, XComs and the version link go with it (ON DELETE CASCADE).
DELETE FROM dag_run WHERE pk = $1 AND state NOT IN ('queued', 'running')
RETURNING pk;

-- name: lock_dag_for_delete
SELECT dag_id FROM dag WHERE dag_id = $1 FOR UPDATE;

-- name: count_active_runs_of_dag
SELECT count(*) FROM dag_run WHERE dag_id = $1 AND state IN ('queued', 'running');

-- name: delete_runs_of_dag
DELETE FROM dag_run WHERE dag_id = $1;

-- name: delete_backfills_of_dag
DELETE FROM backfill WHERE dag_id = $1;

-- name: delete_asset_queue_of_dag
DELETE FROM asset_dag_run_queue WHERE target_dag_id = $1;

-- name: delete_versions_of_dag
DELETE FROM dag_version WHERE dag_id = $1;

-- name: delete_dag_row
DELETE FROM dag WHERE dag_id = $1;
