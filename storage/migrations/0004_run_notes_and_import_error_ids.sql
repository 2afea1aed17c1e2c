-- A run's note (Airflow's DAG-run note: set when triggering, or later with PATCH .../setNote),
-- stable import-error ids: an identity column, so GET /importErrors/{id} names the same error for
-- as long as its file stays broken (list positions shifted whenever another file broke or healed),
-- and a DAG's owners (its tasks' distinct owners, written at each parse, as Airflow's dag.owners).
ALTER TABLE dag_run ADD COLUMN note text;

ALTER TABLE dag ADD COLUMN owners text[] NOT NULL DEFAULT '{}';

ALTER TABLE import_error ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY
    CONSTRAINT import_error_id_key UNIQUE;
