-- The full current schema of the state store: what applying every file in storage/migrations
-- produces (tests/integration/test_migrations.py checks that they agree). Read this file to learn
-- the schema; change it only together with a new migration.

CREATE TABLE schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per DAG the daemon has ever parsed; is_active is false once its file no longer defines it.
CREATE TABLE dag (
    dag_id text PRIMARY KEY,
    fileloc text NOT NULL,
    is_paused boolean NOT NULL DEFAULT false,
    is_active boolean NOT NULL DEFAULT true,
    schedule text,
    description text,
    max_active_runs integer,
    max_active_tasks integer,
    tags text[] NOT NULL DEFAULT '{}',
    last_parsed_time timestamptz,
    spec jsonb NOT NULL,
    -- the distinct owners of its tasks, sorted (GET /api/v1/dags' owners)
    owners text[] NOT NULL DEFAULT '{}'
);

-- sync_dag_file / remove_dag_file find a file's DAGs by fileloc.
CREATE INDEX dag_fileloc_idx ON dag (fileloc);

-- One row per DAG file that currently fails to load; `id` is the stable import_error_id of the API
-- (kept while the file stays broken, a new one when it breaks again after a fix).
CREATE TABLE import_error (
    filename text PRIMARY KEY,
    message text NOT NULL,
    "timestamp" timestamptz NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT import_error_id_key UNIQUE
);

CREATE TABLE dag_run (
    pk bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_id text NOT NULL,
    run_id text NOT NULL,
    state text NOT NULL,
    run_type text NOT NULL,
    conf jsonb NOT NULL DEFAULT '{}',
    logical_date timestamptz NOT NULL,
    data_interval_start timestamptz NOT NULL,
    data_interval_end timestamptz NOT NULL,
    queued_at timestamptz NOT NULL,
    start_date timestamptz,
    end_date timestamptz,
    external_trigger boolean NOT NULL DEFAULT true,
    -- Airflow's DAG-run note: free text from whoever triggered or annotated the run
    note text,
    -- what makes cron ticks, webhooks and API triggers exactly-once
    CONSTRAINT dag_run_dag_id_run_id_key UNIQUE (dag_id, run_id),
    CONSTRAINT dag_run_state_check CHECK (state IN ('queued', 'running', 'success', 'failed'))
);

-- list_runs: a DAG's runs newest first (and their count).
CREATE INDEX dag_run_dag_id_queued_at_idx ON dag_run (dag_id, queued_at DESC, pk DESC);
-- load_active_runs: the few unfinished runs among many finished ones, oldest first.
CREATE INDEX dag_run_active_idx ON dag_run (queued_at, pk) WHERE state IN ('queued', 'running');

CREATE TABLE task_instance (
    run_pk bigint NOT NULL REFERENCES dag_run (pk) ON DELETE CASCADE,
    task_id text NOT NULL,
    map_index integer NOT NULL DEFAULT -1,
    dag_id text NOT NULL,
    run_id text NOT NULL,
    state text NOT NULL,
    try_number integer NOT NULL DEFAULT 0,
    max_tries integer NOT NULL DEFAULT 0,
    operator text NOT NULL,
    queued_at timestamptz,
    start_date timestamptz,
    end_date timestamptz,
    duration double precision,
    next_retry_at timestamptz,
    external_id text,
    daemon_id text,
    hostname text,
    exit_code integer,
    trigger_classpath text,
    trigger_kwargs jsonb,
    next_wakeup timestamptz,
    PRIMARY KEY (run_pk, task_id, map_index),
    CONSTRAINT task_instance_state_check CHECK (state IN (
        'none', 'scheduled', 'queued', 'running', 'success', 'failed', 'up_for_retry',
        'deferred', 'skipped', 'upstream_failed', 'removed'
    ))
);

-- Re-arming deferred triggers after a restart, in wake-up order.
CREATE INDEX task_instance_deferred_idx ON task_instance (next_wakeup) WHERE state = 'deferred';
-- Taking over the running work of a dead daemon.
CREATE INDEX task_instance_daemon_active_idx ON task_instance (daemon_id)
    WHERE state IN ('queued', 'running');

CREATE TABLE xcom (
    run_pk bigint NOT NULL REFERENCES dag_run (pk) ON DELETE CASCADE,
    task_id text NOT NULL,
    map_index integer NOT NULL DEFAULT -1,
    key text NOT NULL,
    value jsonb NOT NULL,
    "timestamp" timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_pk, task_id, map_index, key)
);

-- One row per daemon process sharing this database; survivors take over a silent one's work.
CREATE TABLE daemon (
    daemon_id text PRIMARY KEY,
    hostname text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);

-- The database's installation id: written once by the first daemon, carried in the environment
-- of every try it starts, so that a restarted daemon recognises its own processes for certain.
CREATE TABLE installation (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    installation_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- DAG versions: the spec parsed from each source of a DAG file (by the source's sha256), and
-- the version each run was created with, so that a run keeps running the version it was
-- triggered with (task list, commands and callables) after the file changes or a restart.
CREATE TABLE dag_version (
    dag_id text NOT NULL,
    source_hash text NOT NULL,
    spec jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (dag_id, source_hash)
);

-- Runs created before versions were kept have no row: they run the DAG as it is loaded.
CREATE TABLE dag_run_version (
    run_pk bigint PRIMARY KEY REFERENCES dag_run (pk) ON DELETE CASCADE,
    dag_id text NOT NULL,
    source_hash text NOT NULL,
    FOREIGN KEY (dag_id, source_hash) REFERENCES dag_version (dag_id, source_hash)
);

-- === 0005_schedules_and_backfills ===
-- Schedules and backfills: the next scheduled run of each DAG as the scheduler last computed it
-- (GET /dags' next_dagrun fields), the backfills (Airflow 3's backfill table) with the logical
-- dates each one plans, and the backfill a run belongs to.
ALTER TABLE dag ADD COLUMN next_dagrun timestamptz;
ALTER TABLE dag ADD COLUMN next_dagrun_data_interval_start timestamptz;
ALTER TABLE dag ADD COLUMN next_dagrun_data_interval_end timestamptz;
ALTER TABLE dag ADD COLUMN next_dagrun_create_after timestamptz;

CREATE TABLE backfill (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_id text NOT NULL,
    from_date timestamptz NOT NULL,
    to_date timestamptz NOT NULL,
    dag_run_conf jsonb NOT NULL DEFAULT '{}',
    is_paused boolean NOT NULL DEFAULT false,
    reprocess_behavior text NOT NULL,
    max_active_runs integer NOT NULL,
    run_backwards boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    completed_at timestamptz,
    updated_at timestamptz NOT NULL,
    CONSTRAINT backfill_reprocess_behavior_check CHECK (reprocess_behavior IN ('none', 'failed', 'completed')),
    CONSTRAINT backfill_max_active_runs_check CHECK (max_active_runs >= 1)
);

CREATE INDEX backfill_dag_id_idx ON backfill (dag_id, id DESC);

-- The runs a backfill plans, in the order it creates them; run_pk once created, or why not.
CREATE TABLE backfill_dag_run (
    backfill_id bigint NOT NULL REFERENCES backfill (id) ON DELETE CASCADE,
    sort_ordinal integer NOT NULL,
    logical_date timestamptz NOT NULL,
    data_interval_start timestamptz NOT NULL,
    data_interval_end timestamptz NOT NULL,
    run_pk bigint REFERENCES dag_run (pk) ON DELETE SET NULL,
    exception_reason text,
    PRIMARY KEY (backfill_id, sort_ordinal)
);

ALTER TABLE dag_run ADD COLUMN backfill_id bigint REFERENCES backfill (id) ON DELETE SET NULL;

-- The latest scheduled run of a DAG (where its schedule resumes).
CREATE INDEX dag_run_scheduled_idx ON dag_run (dag_id, logical_date DESC) WHERE run_type = 'scheduled';
-- The runs of a backfill.
CREATE INDEX dag_run_backfill_idx ON dag_run (backfill_id) WHERE backfill_id IS NOT NULL;

-- === 0006_webhook_deliveries ===
-- Webhook deliveries: every delivery, accepted or refused (never a secret or a signature value),
-- and the idempotency keys that make a redelivered webhook create nothing.
CREATE TABLE webhook_delivery (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook text NOT NULL,
    delivery_id text,
    received_at timestamptz NOT NULL,
    status integer NOT NULL,
    created boolean NOT NULL DEFAULT false,
    dag_id text,
    run_id text,
    asset_uri text,
    asset_event_id bigint,
    reason text
);

CREATE INDEX webhook_delivery_webhook_idx ON webhook_delivery (webhook, received_at DESC, id DESC);
CREATE INDEX webhook_delivery_received_at_idx ON webhook_delivery (received_at);

-- Deliveries without a delivery id are deduplicated by the hash of their body within the
-- webhook's dedup_window: the first one claims the row (and names the run id), an expired row is
-- claimed again by the next, so the same body is exactly-once per window.
CREATE TABLE webhook_dedup (
    webhook text NOT NULL,
    body_sha256 text NOT NULL,
    idempotency_key text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (webhook, body_sha256)
);

CREATE INDEX webhook_dedup_expires_at_idx ON webhook_dedup (expires_at);

-- === 0007_assets ===
-- Assets (Airflow 3's data-aware scheduling): the assets known by URI, their events, the queue of
-- events each consumer DAG has not run for yet, and which events triggered which runs.
CREATE TABLE asset (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uri text NOT NULL CONSTRAINT asset_uri_key UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per update of an asset: by a task's success (source_* name the task instance) or from
-- outside (POST /api/v1/assets/events, webhooks; idempotency_key makes a delivery exactly-once).
CREATE TABLE asset_event (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    asset_id bigint NOT NULL REFERENCES asset (id) ON DELETE CASCADE,
    extra jsonb NOT NULL DEFAULT '{}',
    "timestamp" timestamptz NOT NULL,
    source_dag_id text,
    source_task_id text,
    source_run_id text,
    source_map_index integer NOT NULL DEFAULT -1,
    idempotency_key text CONSTRAINT asset_event_idempotency_key_key UNIQUE
);

-- list_asset_events of one asset, newest first.
CREATE INDEX asset_event_asset_id_idx ON asset_event (asset_id, id DESC);

-- Airflow's asset_dag_run_queue: the events a consumer DAG has not had a run for, one row per
-- (DAG, event), written in the transaction of the event; the transaction that creates the DAG's
-- asset-triggered run deletes exactly the rows it consumed (what makes it exactly-once).
CREATE TABLE asset_dag_run_queue (
    target_dag_id text NOT NULL,
    asset_event_id bigint NOT NULL REFERENCES asset_event (id) ON DELETE CASCADE,
    asset_id bigint NOT NULL REFERENCES asset (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (target_dag_id, asset_event_id)
);

-- The events that triggered an asset-triggered run (its `triggering_asset_events`).
CREATE TABLE dag_run_asset_event (
    run_pk bigint NOT NULL REFERENCES dag_run (pk) ON DELETE CASCADE,
    asset_event_id bigint NOT NULL REFERENCES asset_event (id) ON DELETE CASCADE,
    PRIMARY KEY (run_pk, asset_event_id)
);

-- an event's created_dagruns
CREATE INDEX dag_run_asset_event_event_idx ON dag_run_asset_event (asset_event_id);

-- The consumers of an asset: the DAGs whose spec's asset_condition names its URI.
CREATE INDEX dag_asset_condition_uris_idx ON dag
    USING gin ((jsonb_path_query_array(spec, 'lax $.asset_condition.**.asset')) jsonb_path_ops);

-- The audit trail (Airflow's event log): who did what through the REST API. One row per
-- mutating request, answered or refused; `extra` holds the status and the body's keys, never a
-- value of conf or anything secret.
CREATE TABLE event_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dttm timestamptz NOT NULL,
    event text NOT NULL,
    owner text NOT NULL,
    dag_id text,
    task_id text,
    run_id text,
    map_index integer,
    try_number integer,
    execution_date timestamptz,
    extra jsonb
);

CREATE INDEX event_log_dttm_idx ON event_log (dttm);
CREATE INDEX event_log_dag_id_idx ON event_log (dag_id, dttm);

-- Scale-out: several daemons (replicas) on one database, coordinated only by the database.
--
-- A run is owned by one replica at a time (dag_run.owner). A replica's lease is its daemon
-- row's lease_until, renewed by its heartbeat with the database's clock (now()), never a
-- replica's. Every commit a replica makes is fenced in SQL on `owner = me` while its lease
-- holds; a run whose owner's lease ran out is claimed by a survivor (FOR UPDATE SKIP LOCKED).
-- Additive only: every new column is nullable or has a default, so a replica of the previous
-- version is refused by the version check rather than broken by the schema.
ALTER TABLE dag_run ADD COLUMN owner text;
ALTER TABLE daemon ADD COLUMN lease_until timestamptz NOT NULL DEFAULT now();
ALTER TABLE daemon ADD COLUMN version text NOT NULL DEFAULT '';
ALTER TABLE daemon ADD COLUMN api_url text;

-- The runs a replica owns (fencing, takeover, `orchestrator daemons`).
CREATE INDEX dag_run_owner_active_idx ON dag_run (owner) WHERE state IN ('queued', 'running');
-- Admission counts a DAG's running runs against max_active_runs.
CREATE INDEX dag_run_dag_id_state_idx ON dag_run (dag_id) WHERE state IN ('queued', 'running');

-- Replicas sleep until a run waits to be started: a run created (or queued again) without an
-- owner wakes them, whichever replica or transaction created it (the payload is the DAG id;
-- PostgreSQL folds equal payloads of one transaction into one notification).
CREATE FUNCTION orchestrator_notify_waiting_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orchestrator_runs', NEW.dag_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER dag_run_waiting_insert AFTER INSERT ON dag_run
    FOR EACH ROW WHEN (NEW.state = 'queued' AND NEW.owner IS NULL)
    EXECUTE FUNCTION orchestrator_notify_waiting_run();

CREATE TRIGGER dag_run_waiting_update AFTER UPDATE OF state, owner ON dag_run
    FOR EACH ROW WHEN (NEW.state = 'queued' AND NEW.owner IS NULL
                       AND (OLD.state IS DISTINCT FROM NEW.state OR OLD.owner IS NOT NULL))
    EXECUTE FUNCTION orchestrator_notify_waiting_run();

-- A running run whose owner let go of it (a replica shutting down hands its runs over): the
-- survivors claim it at once instead of waiting for a lease to run out.
CREATE FUNCTION orchestrator_notify_released_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orchestrator_released', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER dag_run_released AFTER UPDATE OF owner ON dag_run
    FOR EACH ROW WHEN (NEW.state = 'running' AND NEW.owner IS NULL AND OLD.owner IS NOT NULL)
    EXECUTE FUNCTION orchestrator_notify_released_run();

-- The replicas' shared secret: a replica that forwards a request to another (an operation on a
-- run the other drives, a log only the other has) signs it with this, so the other trusts the
-- identity the first one authenticated. Made by the first replica; readable only by those who
-- can read the database, who could do anything already.
CREATE TABLE replica_secret (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    secret text NOT NULL
);

-- A database created from this file is at the newest migration.
INSERT INTO schema_migrations (version, name) VALUES
    (1, 'initial'),
    (2, 'installation'),
    (3, 'dag_versions'),
    (4, 'run_notes_and_import_error_ids'),
    (5, 'schedules_and_backfills'),
    (6, 'webhook_deliveries'),
    (7, 'assets'),
    (8, 'event_log'),
    (9, 'run_ownership');
