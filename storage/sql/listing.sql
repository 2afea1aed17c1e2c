-- The API's lists of DAGs, DAG runs and task instances with Airflow's filters and order_by,
-- the XCom entries of a task instance, and the DAG files it may serve (GET /dagSources).
--
-- Every filter is a parameter that is NULL when the caller did not give it. The order is a
-- parameter too (`$n` = 'state' or '-state'): each allowed column has one CASE arm per
-- direction, so the SQL text never changes and no input ever becomes SQL.
-- (orchestrator.core.listing names the allowed columns.)

-- name: find_runs
SELECT pk, dag_id, run_id, state, run_type, conf, logical_date, data_interval_start,
       data_interval_end, queued_at, start_date, end_date, external_trigger, note, backfill_id
FROM dag_run
WHERE ($1::text[] IS NULL OR dag_id = ANY($1::text[]))
  AND ($2::text[] IS NULL OR state = ANY($2::text[]))
  AND ($3::text[] IS NULL OR run_type = ANY($3::text[]))
  AND ($4::timestamptz IS NULL OR logical_date >= $4) AND ($5::timestamptz IS NULL OR logical_date <= $5)
  AND ($6::timestamptz IS NULL OR start_date >= $6) AND ($7::timestamptz IS NULL OR start_date <= $7)
  AND ($8::timestamptz IS NULL OR end_date >= $8) AND ($9::timestamptz IS NULL OR end_date <= $9)
  AND ($10::timestamptz IS NULL OR greatest(queued_at, start_date, end_date) >= $10)
  AND ($11::timestamptz IS NULL OR greatest(queued_at, start_date, end_date) <= $11)
ORDER BY
  CASE WHEN $12::text = 'id' THEN pk END ASC, CASE WHEN $12 = '-id' THEN pk END DESC,
  CASE WHEN $12 = 'state' THEN state END ASC, CASE WHEN $12 = '-state' THEN state END DESC,
  CASE WHEN $12 = 'dag_id' THEN dag_id END ASC, CASE WHEN $12 = '-dag_id' THEN dag_id END DESC,
  CASE WHEN $12 = 'execution_date' THEN logical_date END ASC,
  CASE WHEN $12 = '-execution_date' THEN logical_date END DESC,
  CASE WHEN $12 = 'dag_run_id' THEN run_id END ASC, CASE WHEN $12 = '-dag_run_id' THEN run_id END DESC,
  CASE WHEN $12 = 'start_date' THEN start_date END ASC,
  CASE WHEN $12 = '-start_date' THEN start_date END DESC,
  CASE WHEN $12 = 'end_date' THEN end_date END ASC, CASE WHEN $12 = '-end_date' THEN end_date END DESC,
  CASE WHEN $12 = 'updated_at' THEN greatest(queued_at, start_date, end_date) END ASC,
  CASE WHEN $12 = '-updated_at' THEN greatest(queued_at, start_date, end_date) END DESC,
  CASE WHEN $12 = 'external_trigger' THEN external_trigger END ASC,
  CASE WHEN $12 = '-external_trigger' THEN external_trigger END DESC,
  CASE WHEN $12 = 'conf' THEN conf END ASC, CASE WHEN $12 = '-conf' THEN conf END DESC,
  CASE WHEN $12 = 'queued_at' THEN queued_at END ASC, CASE WHEN $12 = '-queued_at' THEN queued_at END DESC,
  CASE WHEN $12 LIKE '-%' THEN pk END DESC,
  pk ASC
LIMIT $13 OFFSET $14;

-- name: count_found_runs
SELECT count(*)
FROM dag_run
WHERE ($1::text[] IS NULL OR dag_id = ANY($1::text[]))
  AND ($2::text[] IS NULL OR state = ANY($2::text[]))
  AND ($3::text[] IS NULL OR run_type = ANY($3::text[]))
  AND ($4::timestamptz IS NULL OR logical_date >= $4) AND ($5::timestamptz IS NULL OR logical_date <= $5)
  AND ($6::timestamptz IS NULL OR start_date >= $6) AND ($7::timestamptz IS NULL OR start_date <= $7)
  AND ($8::timestamptz IS NULL OR end_date >= $8) AND ($9::timestamptz IS NULL OR end_date <= $9)
  AND ($10::timestamptz IS NULL OR greatest(queued_at, start_date, end_date) >= $10)
  AND ($11::timestamptz IS NULL OR greatest(queued_at, start_date, end_date) <= $11);

-- name: find_task_instances
-- Task instances with their run (r_* columns), across runs and DAGs. The DAG and run ids are
-- matched on dag_run (its unique (dag_id, run_id) index), then task_instance by its primary key.
SELECT t.run_pk, t.dag_id, t.run_id, t.task_id, t.map_index, t.state, t.try_number, t.max_tries,
       t.operator, t.queued_at, t.start_date, t.end_date, t.duration, t.next_retry_at, t.external_id,
       t.daemon_id, t.hostname, t.exit_code, t.trigger_classpath, t.trigger_kwargs, t.next_wakeup,
       r.pk AS r_pk, r.dag_id AS r_dag_id, r.run_id AS r_run_id, r.state AS r_state,
       r.run_type AS r_run_type, r.conf AS r_conf, r.logical_date AS r_logical_date,
       r.data_interval_start AS r_data_interval_start, r.data_interval_end AS r_data_interval_end,
       r.queued_at AS r_queued_at, r.start_date AS r_start_date, r.end_date AS r_end_date,
       r.external_trigger AS r_external_trigger, r.note AS r_note, r.backfill_id AS r_backfill_id
FROM task_instance t JOIN dag_run r ON r.pk = t.run_pk
WHERE ($1::text[] IS NULL OR r.dag_id = ANY($1::text[]))
  AND ($2::text[] IS NULL OR r.run_id = ANY($2::text[]))
  AND ($3::text[] IS NULL OR t.task_id = ANY($3::text[]))
  AND ($4::text[] IS NULL OR t.state = ANY($4::text[]))
  -- every task instance runs in Airflow's default pool and queue
  AND ($5::text[] IS NULL OR 'default_pool' = ANY($5::text[]))
  AND ($6::text[] IS NULL OR 'default' = ANY($6::text[]))
  AND ($7::timestamptz IS NULL OR r.logical_date >= $7) AND ($8::timestamptz IS NULL OR r.logical_date <= $8)
  AND ($9::timestamptz IS NULL OR t.start_date >= $9) AND ($10::timestamptz IS NULL OR t.start_date <= $10)
  AND ($11::timestamptz IS NULL OR t.end_date >= $11) AND ($12::timestamptz IS NULL OR t.end_date <= $12)
  AND ($13::timestamptz IS NULL OR greatest(t.queued_at, t.start_date, t.end_date) >= $13)
  AND ($14::timestamptz IS NULL OR greatest(t.queued_at, t.start_date, t.end_date) <= $14)
  AND ($15::float8 IS NULL OR t.duration >= $15) AND ($16::float8 IS NULL OR t.duration <= $16)
ORDER BY
  CASE WHEN $17::text = 'dag_id' THEN t.dag_id END ASC, CASE WHEN $17 = '-dag_id' THEN t.dag_id END DESC,
  CASE WHEN $17 = 'dag_run_id' THEN t.run_id END ASC, CASE WHEN $17 = '-dag_run_id' THEN t.run_id END DESC,
  CASE WHEN $17 = 'task_id' THEN t.task_id END ASC, CASE WHEN $17 = '-task_id' THEN t.task_id END DESC,
  CASE WHEN $17 = 'map_index' THEN t.map_index END ASC,
  CASE WHEN $17 = '-map_index' THEN t.map_index END DESC,
  CASE WHEN $17 = 'execution_date' THEN r.logical_date END ASC,
  CASE WHEN $17 = '-execution_date' THEN r.logical_date END DESC,
  CASE WHEN $17 = 'start_date' THEN t.start_date END ASC,
  CASE WHEN $17 = '-start_date' THEN t.start_date END DESC,
  CASE WHEN $17 = 'end_date' THEN t.end_date END ASC, CASE WHEN $17 = '-end_date' THEN t.end_date END DESC,
  CASE WHEN $17 = 'duration' THEN t.duration END ASC, CASE WHEN $17 = '-duration' THEN t.duration END DESC,
  CASE WHEN $17 = 'state' THEN t.state END ASC, CASE WHEN $17 = '-state' THEN t.state END DESC,
  CASE WHEN $17 = 'try_number' THEN t.try_number END ASC,
  CASE WHEN $17 = '-try_number' THEN t.try_number END DESC,
  CASE WHEN $17 = 'queued_when' THEN t.queued_at END ASC,
  CASE WHEN $17 = '-queued_when' THEN t.queued_at END DESC,
  t.run_pk, t.task_id, t.map_index
LIMIT $18 OFFSET $19;

-- name: count_found_task_instances
SELECT count(*)
FROM task_instance t JOIN dag_run r ON r.pk = t.run_pk
WHERE ($1::text[] IS NULL OR r.dag_id = ANY($1::text[]))
  AND ($2::text[] IS NULL OR r.run_id = ANY($2::text[]))
  AND ($3::text[] IS NULL OR t.task_id = ANY($3::text[]))
  AND ($4::text[] IS NULL OR t.state = ANY($4::text[]))
  AND ($5::text[] IS NULL OR 'default_pool' = ANY($5::text[]))
  AND ($6::text[] IS NULL OR 'default' = ANY($6::text[]))
  AND ($7::timestamptz IS NULL OR r.logical_date >= $7) AND ($8::timestamptz IS NULL OR r.logical_date <= $8)
  AND ($9::timestamptz IS NULL OR t.start_date >= $9) AND ($10::timestamptz IS NULL OR t.start_date <= $10)
  AND ($11::timestamptz IS NULL OR t.end_date >= $11) AND ($12::timestamptz IS NULL OR t.end_date <= $12)
  AND ($13::timestamptz IS NULL OR greatest(t.queued_at, t.start_date, t.end_date) >= $13)
  AND ($14::timestamptz IS NULL OR greatest(t.queued_at, t.start_date, t.end_date) <= $14)
  AND ($15::float8 IS NULL OR t.duration >= $15) AND ($16::float8 IS NULL OR t.duration <= $16);

-- name: find_dags
SELECT dag_id, fileloc, is_paused, is_active, schedule, description, max_active_runs,
       max_active_tasks, tags, last_parsed_time, spec, owners,
       EXISTS (SELECT 1 FROM import_error AS e WHERE e.filename = dag.fileloc) AS has_import_errors,
       next_dagrun, next_dagrun_data_interval_start, next_dagrun_data_interval_end, next_dagrun_create_after
FROM dag
WHERE (is_active OR NOT $1::boolean)
  AND ($2::boolean IS NULL OR is_paused = $2)
  AND ($3::text[] IS NULL OR tags && $3::text[])
  -- a substring, matched literally: the caller's % and _ are escaped by the store
  AND ($4::text IS NULL OR dag_id ILIKE '%' || $4 || '%')
ORDER BY
  CASE WHEN $5::text = 'dag_id' THEN dag_id END ASC, CASE WHEN $5 = '-dag_id' THEN dag_id END DESC,
  CASE WHEN $5 = 'fileloc' THEN fileloc END ASC, CASE WHEN $5 = '-fileloc' THEN fileloc END DESC,
  CASE WHEN $5 = 'is_paused' THEN is_paused END ASC, CASE WHEN $5 = '-is_paused' THEN is_paused END DESC,
  CASE WHEN $5 = 'is_active' THEN is_active END ASC, CASE WHEN $5 = '-is_active' THEN is_active END DESC,
  CASE WHEN $5 = 'last_parsed_time' THEN last_parsed_time END ASC,
  CASE WHEN $5 = '-last_parsed_time' THEN last_parsed_time END DESC,
  CASE WHEN $5 = 'next_dagrun' THEN next_dagrun END ASC,
  CASE WHEN $5 = '-next_dagrun' THEN next_dagrun END DESC,
  dag_id
LIMIT $6 OFFSET $7;

-- name: count_found_dags
SELECT count(*)
FROM dag
WHERE (is_active OR NOT $1::boolean)
  AND ($2::boolean IS NULL OR is_paused = $2)
  AND ($3::text[] IS NULL OR tags && $3::text[])
  AND ($4::text IS NULL OR dag_id ILIKE '%' || $4 || '%');

-- name: find_xcom_entries
-- The XComs of one task instance (map_index NULL: every map index; key NULL: every key).
SELECT r.dag_id, r.run_id, r.logical_date, x.task_id, x.map_index, x.key, x.value, x."timestamp"
FROM xcom x JOIN dag_run r ON r.pk = x.run_pk
WHERE x.run_pk = $1 AND x.task_id = $2
  AND ($3::integer IS NULL OR x.map_index = $3)
  AND ($4::text IS NULL OR x.key = $4)
ORDER BY x.map_index, x.key
LIMIT $5 OFFSET $6;

-- name: count_xcom_entries
SELECT count(*) FROM xcom x
WHERE x.run_pk = $1 AND x.task_id = $2
  AND ($3::integer IS NULL OR x.map_index = $3)
  AND ($4::text IS NULL OR x.key = $4);

-- name: is_dag_file
-- GET /dagSources serves only files that define a DAG the store knows.
SELECT EXISTS (SELECT 1 FROM dag WHERE fileloc = $1);

-- name: find_import_errors
SELECT id, filename, message, "timestamp"
FROM import_error
ORDER BY
  CASE WHEN $1::text = 'import_error_id' THEN id END ASC, CASE WHEN $1 = '-import_error_id' THEN id END DESC,
  CASE WHEN $1 = 'timestamp' THEN "timestamp" END ASC, CASE WHEN $1 = '-timestamp' THEN "timestamp" END DESC,
  CASE WHEN $1 = 'filename' THEN filename END ASC, CASE WHEN $1 = '-filename' THEN filename END DESC,
  id
LIMIT $2 OFFSET $3;

-- name: count_import_errors
SELECT count(*) FROM import_error;
