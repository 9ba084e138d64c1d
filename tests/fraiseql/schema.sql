-- The database behind the FraiseQL origin of the end-to-end tests (tests/tests/support/fraiseql.rs):
-- one table, and the view FraiseQL reads it through (a jsonb `data` column per row).
CREATE TABLE widgets (
    id   integer PRIMARY KEY,
    name text NOT NULL
);

CREATE VIEW v_widget AS
SELECT id, jsonb_build_object('id', id, 'name', name) AS data
FROM widgets;

INSERT INTO widgets (id, name) VALUES (1, 'sprocket'), (2, 'gear'), (3, 'flange');
