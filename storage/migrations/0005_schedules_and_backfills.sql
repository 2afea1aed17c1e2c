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
