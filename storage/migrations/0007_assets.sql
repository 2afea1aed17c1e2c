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
