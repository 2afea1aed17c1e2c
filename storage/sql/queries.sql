-- Every query the state store runs, by name (loaded once into storage.sql.QUERIES).
-- Column lists of the SELECTs follow the field order of the records in orchestrator/core/records.py.

-- name: migration_lock
-- Serialises migrations of several daemons starting at once (session-level advisory lock).
SELECT pg_advisory_lock($1::bigint);

-- name: migration_unlock
SELECT pg_advisory_unlock($1::bigint);

-- name: migrations_table_exists
SELECT to_regclass('schema_migrations') IS NOT NULL;

-- name: applied_migrations
SELECT version FROM schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO schema_migrations (version, name) VALUES ($1, $2);

-- name: upsert_dag
-- A DAG seen in a successful parse: active again, settings refreshed, is_paused kept as it was.
INSERT INTO dag (dag_id, fileloc, is_paused, is_active, schedule, description, max_active_runs,
                 max_active_tasks, tags, last_parsed_time, spec, owners)
VALUES ($1, $2, $3, true, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (dag_id) DO UPDATE SET
    fileloc = EXCLUDED.fileloc,
    is_active = true,
    schedule = EXCLUDED.schedule,
    description = EXCLUDED.description,
    max_active_runs = EXCLUDED.max_active_runs,
    max_active_tasks = EXCLUDED.max_active_tasks,
    tags = EXCLUDED.tags,
    last_parsed_time = EXCLUDED.last_parsed_time,
    spec = EXCLUDED.spec,
    owners = EXCLUDED.owners;

-- name: deactivate_dags_missing_from_file
UPDATE dag SET is_active = false
WHERE fileloc = $1 AND is_active AND NOT (dag_id = ANY($2::text[]));

-- name: deactivate_dags_of_file
UPDATE dag SET is_active = false WHERE fileloc = $1 AND is_active;

-- name: delete_import_error
DELETE FROM import_error WHERE filename = $1;

-- name: upsert_import_error
INSERT INTO import_error (filename, message, "timestamp") VALUES ($1, $2, $3)
ON CONFLICT (filename) DO UPDATE SET message = EXCLUDED.message, "timestamp" = EXCLUDED."timestamp";

-- name: list_import_errors
-- Oldest first, by the stable id (Airflow's default order for GET /importErrors).
SELECT id, filename, message, "timestamp" FROM import_error ORDER BY id;

-- name: check_database
-- /health's metadatabase check: one round trip through the pool.
SELECT 1;

-- name: list_dags
SELECT dag_id, fileloc, is_paused, is_active, schedule, description, max_active_runs,
       max_active_tasks, tags, last_parsed_time, spec, owners,
       EXISTS (SELECT 1 FROM import_error AS e WHERE e.filename = dag.fileloc) AS has_import_errors,
       next_dagrun, next_dagrun_data_interval_start, next_dagrun_data_interval_end, next_dagrun_create_after
FROM dag
WHERE is_active OR NOT $1::boolean
ORDER BY dag_id
LIMIT $2 OFFSET $3;

-- name: count_dags
SELECT count(*) FROM dag WHERE is_active OR NOT $1::boolean;

-- name: get_dag
SELECT dag_id, fileloc, is_paused, is_active, schedule, description, max_active_runs,
       max_active_tasks, tags, last_parsed_time, spec, owners,
       EXISTS (SELECT 1 FROM import_error AS e WHERE e.filename = dag.fileloc) AS has_import_errors,
       next_dagrun, next_dagrun_data_interval_start, next_dagrun_data_interval_end, next_dagrun_create_after
FROM dag WHERE dag_id = $1;

-- name: set_dag_paused
UPDATE dag SET is_paused = $2 WHERE dag_id = $1
RETURNING dag_id, fileloc, is_paused, is_active, schedule, description, max_active_runs,
          max_active_tasks, tags, last_parsed_time, spec, owners,
          EXISTS (SELECT 1 FROM import_error AS e WHERE e.filename = dag.fileloc) AS has_import_errors,
          next_dagrun, next_dagrun_data_interval_start, next_dagrun_data_interval_end,
          next_dagrun_create_after;

-- name: insert_run
-- Uniqueness on (dag_id, run_id) is what makes a trigger exactly-once: a duplicate returns nothing.
INSERT INTO dag_run (dag_id, run_id, state, run_type, conf, logical_date, data_interval_start,
                     data_interval_end, queued_at, external_trigger, note, backfill_id)
VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (dag_id, run_id) DO NOTHING
RETURNING pk, dag_id, run_id, state, run_type, conf, logical_date, data_interval_start,
          data_interval_end, queued_at, start_date, end_date, external_trigger, note, backfill_id;

-- name: set_run_note
-- The note is the API's alone: the engine's whole-row run updates (update_runs) never write it.
UPDATE dag_run SET note = $3 WHERE dag_id = $1 AND run_id = $2
RETURNING pk, dag_id, run_id, state, run_type, conf, logical_date, data_interval_start,
          data_interval_end, queued_at, start_date, end_date, external_trigger, note;

-- name: insert_dag_version
-- A version is written once; the same source parsed again changes nothing.
INSERT INTO dag_version (dag_id, source_hash, spec, created_at)
VALUES ($1, $2, $3, $4)
ON CONFLICT (dag_id, source_hash) DO NOTHING;

-- name: insert_run_version
INSERT INTO dag_run_version (run_pk, dag_id, source_hash)
SELECT $1, $2, $3
WHERE EXISTS (SELECT 1 FROM dag_version WHERE dag_id = $2 AND source_hash = $3);

-- name: list_versions_of_runs
-- The spec of the version each of these runs was created with (runs without one are left out).
SELECT v.run_pk, d.spec
FROM dag_run_version v
JOIN dag_version d ON d.dag_id = v.dag_id AND d.source_hash = v.source_hash
WHERE v.run_pk = ANY($1::bigint[]);

-- name: insert_task_instances
INSERT INTO task_instance (run_pk, dag_id, run_id, task_id, map_index, state, max_tries, operator)
SELECT $1, $2, $3, u.task_id, u.map_index, 'none', u.max_tries, u.operator
FROM unnest($4::text[], $5::integer[], $6::integer[], $7::text[])
    AS u (task_id, map_index, max_tries, operator);

-- name: get_run
SELECT pk, dag_id, run_id, state, run_type, conf, logical_date, data_interval_start,
       data_interval_end, queued_at, start_date, end_date, external_trigger, note, backfill_id
FROM dag_run WHERE dag_id = $1 AND run_id = $2;

-- name: list_runs
SELECT pk, dag_id, run_id, state, run_type, conf, logical_date, data_interval_start,
       data_interval_end, queued_at, start_date, end_date, external_trigger, note
FROM dag_run
WHERE dag_id = $1 AND ($2::text[] IS NULL OR state = ANY($2::text[]))
ORDER BY queued_at DESC, pk DESC
LIMIT $3 OFFSET $4;

-- name: count_runs
SELECT count(*) FROM dag_run WHERE dag_id = $1 AND ($2::text[] IS NULL OR state = ANY($2::text[]));

-- name: list_active_runs
SELECT pk, dag_id, run_id, state, run_type, conf, logical_date, data_interval_start,
       data_interval_end, queued_at, start_date, end_date, external_trigger, note
FROM dag_run
WHERE state IN ('queued', 'running')
ORDER BY queued_at, pk;

-- name: list_task_instances_of_runs
SELECT run_pk, dag_id, run_id, task_id, map_index, state, try_number, max_tries, operator,
       queued_at, start_date, end_date, duration, next_retry_at, external_id, daemon_id, hostname,
       exit_code, trigger_classpath, trigger_kwargs, next_wakeup
FROM task_instance
WHERE run_pk = ANY($1::bigint[])
ORDER BY run_pk, task_id, map_index;

-- name: list_xcoms_of_runs
SELECT run_pk, task_id, map_index, key, value
FROM xcom
WHERE run_pk = ANY($1::bigint[])
ORDER BY run_pk, task_id, map_index, key;

-- name: list_task_instances
SELECT run_pk, dag_id, run_id, task_id, map_index, state, try_number, max_tries, operator,
       queued_at, start_date, end_date, duration, next_retry_at, external_id, daemon_id, hostname,
       exit_code, trigger_classpath, trigger_kwargs, next_wakeup
FROM task_instance
WHERE run_pk = $1
ORDER BY task_id, map_index;

-- name: get_task_instance
SELECT run_pk, dag_id, run_id, task_id, map_index, state, try_number, max_tries, operator,
       queued_at, start_date, end_date, duration, next_retry_at, external_id, daemon_id, hostname,
       exit_code, trigger_classpath, trigger_kwargs, next_wakeup
FROM task_instance
WHERE run_pk = $1 AND task_id = $2 AND map_index = $3;

-- name: list_xcoms
SELECT run_pk, task_id, map_index, key, value
FROM xcom
WHERE run_pk = $1
ORDER BY task_id, map_index, key;

-- name: commit_changes
-- The hot path: a whole change set (task instances, runs, XComs) as ONE statement, one round trip,
-- FENCED: only rows of runs that $37 owns are written (NULL: the store has no owner, as in tools
-- and tests, and writes only unowned runs). The runs are locked first (FOR NO KEY UPDATE): a claim
-- by another replica either committed before (then the owner differs and the rows are refused)
-- or waits for this commit. Returns the runs that were written; the caller drops the others.
-- Whole rows, any number of them (keys unique within the arrays); jsonb travels as text so that a
-- JSON null and SQL NULL cannot be confused inside an array. Data-modifying CTEs always run to
-- completion. `note` is the API's (set_run_note), never written here.
WITH owned AS (
    SELECT pk FROM dag_run
    WHERE pk = ANY($36::bigint[]) AND owner IS NOT DISTINCT FROM $37::text
    ORDER BY pk
    FOR NO KEY UPDATE
), updated_task_instances AS (
    UPDATE task_instance AS t SET
        state = u.state,
        try_number = u.try_number,
        max_tries = u.max_tries,
        operator = u.operator,
        queued_at = u.queued_at,
        start_date = u.start_date,
        end_date = u.end_date,
        duration = u.duration,
        next_retry_at = u.next_retry_at,
        external_id = u.external_id,
        daemon_id = u.daemon_id,
        hostname = u.hostname,
        exit_code = u.exit_code,
        trigger_classpath = u.trigger_classpath,
        trigger_kwargs = u.trigger_kwargs::jsonb,
        next_wakeup = u.next_wakeup
    FROM unnest(
        $1::bigint[], $2::text[], $3::integer[], $4::text[], $5::integer[], $6::integer[], $7::text[],
        $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::double precision[],
        $12::timestamptz[], $13::text[], $14::text[], $15::text[], $16::integer[], $17::text[],
        $18::text[], $19::timestamptz[]
    ) AS u (run_pk, task_id, map_index, state, try_number, max_tries, operator, queued_at, start_date,
            end_date, duration, next_retry_at, external_id, daemon_id, hostname, exit_code,
            trigger_classpath, trigger_kwargs, next_wakeup)
    WHERE t.run_pk = u.run_pk AND t.task_id = u.task_id AND t.map_index = u.map_index
      AND t.run_pk IN (SELECT pk FROM owned)
), updated_runs AS (
    UPDATE dag_run AS r SET
        state = u.state,
        run_type = u.run_type,
        conf = u.conf::jsonb,
        logical_date = u.logical_date,
        data_interval_start = u.data_interval_start,
        data_interval_end = u.data_interval_end,
        queued_at = u.queued_at,
        start_date = u.start_date,
        end_date = u.end_date,
        external_trigger = u.external_trigger
    FROM unnest(
        $20::bigint[], $21::text[], $22::text[], $23::text[], $24::timestamptz[], $25::timestamptz[],
        $26::timestamptz[], $27::timestamptz[], $28::timestamptz[], $29::timestamptz[], $30::boolean[]
    ) AS u (pk, state, run_type, conf, logical_date, data_interval_start, data_interval_end, queued_at,
            start_date, end_date, external_trigger)
    WHERE r.pk = u.pk AND r.pk IN (SELECT pk FROM owned)
), upserted_xcoms AS (
    INSERT INTO xcom (run_pk, task_id, map_index, key, value)
    SELECT u.run_pk, u.task_id, u.map_index, u.key, u.value::jsonb
    FROM unnest($31::bigint[], $32::text[], $33::integer[], $34::text[], $35::text[])
        AS u (run_pk, task_id, map_index, key, value)
    WHERE u.run_pk IN (SELECT pk FROM owned)
    ON CONFLICT (run_pk, task_id, map_index, key) DO UPDATE SET
        value = EXCLUDED.value,
        "timestamp" = now()
)
SELECT array(SELECT pk FROM owned);

-- name: update_task_instance
-- The small change sets of task rows only (a chain's success and its child's queueing): one whole
-- row, FENCED as commit_changes is (the run's row locked, written only if $20 owns it), sent as a
-- pipelined batch of these in one transaction (asyncpg's fetchmany: one round trip), which
-- PostgreSQL runs in about two thirds of commit_changes's time. A refused row returns nothing.
UPDATE task_instance AS t SET
    state = $4,
    try_number = $5,
    max_tries = $6,
    operator = $7,
    queued_at = $8,
    start_date = $9,
    end_date = $10,
    duration = $11,
    next_retry_at = $12,
    external_id = $13,
    daemon_id = $14,
    hostname = $15,
    exit_code = $16,
    trigger_classpath = $17,
    trigger_kwargs = $18::jsonb,
    next_wakeup = $19
WHERE t.run_pk = $1 AND t.task_id = $2 AND t.map_index = $3
  AND t.run_pk IN (
      SELECT r.pk FROM dag_run AS r
      WHERE r.pk = $1 AND r.owner IS NOT DISTINCT FROM $20::text
      FOR NO KEY UPDATE
  )
RETURNING t.run_pk;

-- name: legacy_daemon_lock_holder
-- Daemons from before replicas held this session advisory lock ("orchestr") while they ran: one
-- that still holds it does not know about run ownership, and no replica may start beside it.
-- A bigint advisory lock shows in pg_locks as classid (high 32 bits) and objid (low 32 bits).
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid::bigint = ($1::bigint >> 32) AND objid::bigint = ($1::bigint & 4294967295)
LIMIT 1;

-- name: paused_dag_ids
-- Which of these DAGs are paused (the engine holds their new runs in queued).
SELECT dag_id FROM dag WHERE dag_id = ANY($1::text[]) AND is_paused;

-- name: ensure_installation_id
-- The first caller's id wins; every later call returns it.
WITH inserted AS (
    INSERT INTO installation (installation_id) VALUES ($1)
    ON CONFLICT (singleton) DO NOTHING
    RETURNING installation_id
)
SELECT installation_id FROM inserted
UNION ALL
SELECT installation_id FROM installation
LIMIT 1;

-- name: insert_runs
-- Many runs in one statement (Engine.create_run batches concurrent triggers); a (dag_id, run_id)
-- that exists, or repeats within the batch, inserts nothing and is read back by get_runs_by_ids.
INSERT INTO dag_run (dag_id, run_id, state, run_type, conf, logical_date, data_interval_start,
                     data_interval_end, queued_at, external_trigger, note, backfill_id)
SELECT u.dag_id, u.run_id, 'queued', u.run_type, u.conf::jsonb, u.logical_date, u.data_interval_start,
       u.data_interval_end, u.queued_at, u.external_trigger, u.note, u.backfill_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[],
            $7::timestamptz[], $8::timestamptz[], $9::boolean[], $10::text[], $11::bigint[])
    WITH ORDINALITY AS u (dag_id, run_id, run_type, conf, logical_date, data_interval_start,
                          data_interval_end, queued_at, external_trigger, note, backfill_id, ordinal)
ORDER BY u.ordinal
ON CONFLICT (dag_id, run_id) DO NOTHING
RETURNING pk, dag_id, run_id, state, run_type, conf, logical_date, data_interval_start,
          data_interval_end, queued_at, start_date, end_date, external_trigger, note, backfill_id;

-- name: get_runs_by_ids
SELECT r.pk, r.dag_id, r.run_id, r.state, r.run_type, r.conf, r.logical_date, r.data_interval_start,
       r.data_interval_end, r.queued_at, r.start_date, r.end_date, r.external_trigger, r.note,
       r.backfill_id
FROM unnest($1::text[], $2::text[]) AS k (dag_id, run_id)
JOIN dag_run AS r ON r.dag_id = k.dag_id AND r.run_id = k.run_id;

-- name: insert_task_instances_of_runs
INSERT INTO task_instance (run_pk, dag_id, run_id, task_id, map_index, state, max_tries, operator)
SELECT u.run_pk, u.dag_id, u.run_id, u.task_id, u.map_index, 'none', u.max_tries, u.operator
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::integer[], $6::integer[], $7::text[])
    AS u (run_pk, dag_id, run_id, task_id, map_index, max_tries, operator);

-- name: insert_run_versions
INSERT INTO dag_run_version (run_pk, dag_id, source_hash)
SELECT u.run_pk, u.dag_id, u.source_hash
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u (run_pk, dag_id, source_hash)
WHERE EXISTS (SELECT 1 FROM dag_version AS v WHERE v.dag_id = u.dag_id AND v.source_hash = u.source_hash);
