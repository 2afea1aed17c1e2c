-- The store's queries for the audit trail (named blocks, see storage/sql/__init__.py).

-- name: insert_event_log
-- One entry per mutating API request; the run's logical date is looked up in the same statement.
INSERT INTO event_log (dttm, event, owner, dag_id, task_id, run_id, map_index, try_number,
                       execution_date, extra)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
        (SELECT logical_date FROM dag_run WHERE dag_id = $4 AND run_id = $6), $9);

-- name: list_event_logs
-- One page of entries. Every filter is optional (NULL or an empty array: not filtered);
-- $12 is the order (a field name, "-" first for descending), always broken by the entry's id.
SELECT id, dttm, event, owner, dag_id, task_id, run_id, map_index, try_number, execution_date, extra
FROM event_log
WHERE ($1::text IS NULL OR dag_id = $1)
  AND ($2::text IS NULL OR task_id = $2)
  AND ($3::text IS NULL OR run_id = $3)
  AND ($4::integer IS NULL OR map_index = $4)
  AND ($5::integer IS NULL OR try_number = $5)
  AND ($6::text IS NULL OR event = $6)
  AND ($7::text IS NULL OR owner = $7)
  AND ($8::timestamptz IS NULL OR dttm < $8)
  AND ($9::timestamptz IS NULL OR dttm >= $9)
  AND (cardinality($10::text[]) = 0 OR event = ANY ($10))
  AND NOT (event = ANY ($11::text[]))
ORDER BY
    CASE WHEN $12::text = 'when' THEN dttm END,
    CASE WHEN $12::text = '-when' THEN dttm END DESC,
    CASE $12::text WHEN 'dag_id' THEN dag_id WHEN 'task_id' THEN task_id WHEN 'run_id' THEN run_id
                   WHEN 'event' THEN event WHEN 'owner' THEN owner END,
    CASE $12::text WHEN '-dag_id' THEN dag_id WHEN '-task_id' THEN task_id WHEN '-run_id' THEN run_id
                   WHEN '-event' THEN event WHEN '-owner' THEN owner END DESC,
    CASE WHEN left($12::text, 1) = '-' THEN id END DESC,
    id
LIMIT $13 OFFSET $14;

-- name: count_event_logs
SELECT count(*)
FROM event_log
WHERE ($1::text IS NULL OR dag_id = $1)
  AND ($2::text IS NULL OR task_id = $2)
  AND ($3::text IS NULL OR run_id = $3)
  AND ($4::integer IS NULL OR map_index = $4)
  AND ($5::integer IS NULL OR try_number = $5)
  AND ($6::text IS NULL OR event = $6)
  AND ($7::text IS NULL OR owner = $7)
  AND ($8::timestamptz IS NULL OR dttm < $8)
  AND ($9::timestamptz IS NULL OR dttm >= $9)
  AND (cardinality($10::text[]) = 0 OR event = ANY ($10))
  AND NOT (event = ANY ($11::text[]));

-- name: get_event_log
SELECT id, dttm, event, owner, dag_id, task_id, run_id, map_index, try_number, execution_date, extra
FROM event_log
WHERE id = $1;
