-- The store's queries for schedules (named blocks, see storage/sql/__init__.py).

-- name: latest_scheduled_run
-- Where a DAG's schedule resumes: its latest scheduled run (dag_run_scheduled_idx).
SELECT logical_date, data_interval_start, data_interval_end
FROM dag_run
WHERE dag_id = $1 AND run_type = 'scheduled'
ORDER BY logical_date DESC
LIMIT 1;

-- name: count_unfinished_runs
SELECT count(*) FROM dag_run WHERE dag_id = $1 AND state IN ('queued', 'running');

-- name: lock_dag
-- Serialises the writers of one DAG's schedule (replicas' schedulers): held to the end of the
-- transaction, after which the next writer's statements see what this one committed.
SELECT dag_id FROM dag WHERE dag_id = $1 FOR NO KEY UPDATE;

-- name: set_next_dagrun
-- Run under lock_dag. Never backwards: a next run at or before a scheduled run that exists is
-- stale (another replica created that run and recorded a later next run, or is about to).
UPDATE dag SET
    next_dagrun = $2,
    next_dagrun_data_interval_start = $3,
    next_dagrun_data_interval_end = $4,
    next_dagrun_create_after = $5
WHERE dag_id = $1
  AND (next_dagrun, next_dagrun_data_interval_start, next_dagrun_data_interval_end, next_dagrun_create_after)
      IS DISTINCT FROM ($2::timestamptz, $3::timestamptz, $4::timestamptz, $5::timestamptz)
  AND ($2::timestamptz IS NULL OR NOT EXISTS (
      SELECT 1 FROM dag_run AS r
      WHERE r.dag_id = $1 AND r.run_type = 'scheduled' AND r.logical_date >= $2::timestamptz
  ));

-- name: unfinished_run_exists
-- Run under lock_dag: a queued or running run of the DAG forbids a new @continuous run
-- (dag_run_dag_id_state_idx).
SELECT EXISTS (SELECT 1 FROM dag_run WHERE dag_id = $1 AND state IN ('queued', 'running'));

-- name: scheduled_run_exists
-- Run under lock_dag: a scheduled run of the DAG forbids the @once run (dag_run_scheduled_idx).
SELECT EXISTS (SELECT 1 FROM dag_run WHERE dag_id = $1 AND run_type = 'scheduled');

-- name: unfinished_backfill_of_dag
-- Run under lock_dag: the DAG's unfinished backfill, if any (one at a time per DAG).
SELECT id FROM backfill WHERE dag_id = $1 AND completed_at IS NULL ORDER BY id LIMIT 1;

-- name: insert_backfill
INSERT INTO backfill (dag_id, from_date, to_date, dag_run_conf, is_paused, reprocess_behavior,
                      max_active_runs, run_backwards, created_at, updated_at)
VALUES ($1, $2, $3, $4, false, $5, $6, $7, $8, $8)
RETURNING id, dag_id, from_date, to_date, dag_run_conf, is_paused, reprocess_behavior, max_active_runs,
          run_backwards, created_at, completed_at, updated_at;

-- name: insert_backfill_runs
INSERT INTO backfill_dag_run (backfill_id, sort_ordinal, logical_date, data_interval_start,
                              data_interval_end, exception_reason)
SELECT $1, u.ordinal, u.logical_date, u.data_interval_start, u.data_interval_end, u.reason
FROM unnest($2::integer[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[], $6::text[])
    AS u (ordinal, logical_date, data_interval_start, data_interval_end, reason);

-- name: runs_at_logical_dates
-- The runs of a DAG at these logical dates (what a backfill's reprocess behaviour looks at).
SELECT logical_date, state, run_type, backfill_id
FROM dag_run
WHERE dag_id = $1 AND logical_date = ANY($2::timestamptz[]);

-- name: get_backfill
SELECT id, dag_id, from_date, to_date, dag_run_conf, is_paused, reprocess_behavior, max_active_runs,
       run_backwards, created_at, completed_at, updated_at
FROM backfill WHERE id = $1;

-- name: list_backfills
SELECT id, dag_id, from_date, to_date, dag_run_conf, is_paused, reprocess_behavior, max_active_runs,
       run_backwards, created_at, completed_at, updated_at
FROM backfill
WHERE ($1::text IS NULL OR dag_id = $1)
  AND (NOT $2::boolean OR completed_at IS NULL)
ORDER BY id DESC
LIMIT $3 OFFSET $4;

-- name: count_backfills
SELECT count(*) FROM backfill
WHERE ($1::text IS NULL OR dag_id = $1) AND (NOT $2::boolean OR completed_at IS NULL);

-- name: set_backfill_paused
UPDATE backfill SET is_paused = $2, updated_at = $3
WHERE id = $1 AND completed_at IS NULL
RETURNING id, dag_id, from_date, to_date, dag_run_conf, is_paused, reprocess_behavior, max_active_runs,
          run_backwards, created_at, completed_at, updated_at;

-- name: complete_backfill
UPDATE backfill SET completed_at = $2, updated_at = $2
WHERE id = $1 AND completed_at IS NULL
RETURNING id, dag_id, from_date, to_date, dag_run_conf, is_paused, reprocess_behavior, max_active_runs,
          run_backwards, created_at, completed_at, updated_at;

-- name: list_backfill_runs
SELECT b.backfill_id, b.sort_ordinal, b.logical_date, b.data_interval_start, b.data_interval_end,
       b.run_pk, b.exception_reason, r.run_id, r.state AS run_state
FROM backfill_dag_run AS b
LEFT JOIN dag_run AS r ON r.pk = b.run_pk
WHERE b.backfill_id = $1
ORDER BY b.sort_ordinal;

-- name: lock_live_backfill
-- A backfill that may create runs (neither paused nor completed), locked against a pause or a
-- cancel until the run it creates now is committed; no row: it may not.
SELECT id FROM backfill WHERE id = $1 AND completed_at IS NULL AND NOT is_paused FOR SHARE;

-- name: set_backfill_run
UPDATE backfill_dag_run SET run_pk = $3
WHERE backfill_id = $1 AND sort_ordinal = $2 AND run_pk IS DISTINCT FROM $3;
