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
