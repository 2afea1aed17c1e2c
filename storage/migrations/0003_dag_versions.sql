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
