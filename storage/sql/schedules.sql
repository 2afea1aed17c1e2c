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

-- name: set_next_dagrun
UPDATE dag SET
    next_dagrun = $2,
    next_dagrun_data_interval_start = $3,
    next_dagrun_data_interval_end = $4,
    next_dagrun_create_after = $5
WHERE dag_id = $1
  AND (next_dagrun, next_dagrun_data_interval_start, next_dagrun_data_interval_end, next_dagrun_create_after)
      IS DISTINCT FROM ($2::timestamptz, $3::timestamptz, $4::timestamptz, $5::timestamptz);

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

-- name: set_backfill_run
UPDATE backfill_dag_run SET run_pk = $3
WHERE backfill_id = $1 AND sort_ordinal = $2;
