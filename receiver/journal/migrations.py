"""Versioned schema of the SQLite journal.

Each entry is one version: a list of statements applied in one transaction.
Never edit a released entry; append a new one. Times are Unix seconds (REAL).
"""

from __future__ import annotations

from receiver.journal.base import UNFINISHED_SQL

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('last_ping', '0')",
        """CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            body BLOB NOT NULL,
            body_sha256 TEXT NOT NULL UNIQUE,
            received_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            kind TEXT NOT NULL,
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            reason TEXT NOT NULL,
            severity TEXT NOT NULL,
            outcome TEXT NOT NULL,
            revision TEXT,
            commit_sha TEXT,
            dedupe_key TEXT,
            duplicate_of INTEGER,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            last_error TEXT,
            authenticated_by TEXT NOT NULL
        )""",
        "CREATE INDEX deliveries_by_state ON deliveries (state, next_attempt_at)",
        "CREATE INDEX deliveries_by_object ON deliveries (kind, namespace, name, id)",
        "CREATE INDEX deliveries_by_revision ON deliveries (revision)",
        "CREATE INDEX deliveries_by_commit ON deliveries (commit_sha)",
        "CREATE INDEX deliveries_by_received ON deliveries (received_at)",
        """CREATE UNIQUE INDEX deliveries_one_original_per_key ON deliveries (dedupe_key)
            WHERE dedupe_key IS NOT NULL AND duplicate_of IS NULL""",
        """CREATE TABLE decisions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
            at REAL NOT NULL,
            text TEXT NOT NULL,
            fields TEXT NOT NULL
        )""",
        "CREATE INDEX decisions_by_delivery ON decisions (delivery_id)",
        """CREATE TABLE correlations (
            delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
            position INTEGER NOT NULL,
            commit_sha TEXT NOT NULL,
            committed_at REAL,
            subject TEXT NOT NULL,
            dag_id TEXT,
            run_id TEXT,
            task_ids TEXT NOT NULL,
            map_index INTEGER,
            instance TEXT,
            verdict TEXT NOT NULL,
            PRIMARY KEY (delivery_id, position)
        )""",
        "CREATE INDEX correlations_by_dag ON correlations (dag_id)",
        """CREATE TABLE actions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL UNIQUE,
            delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
            kind TEXT NOT NULL,
            target TEXT NOT NULL,
            state TEXT NOT NULL,
            result TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX actions_by_delivery ON actions (delivery_id)",
        """CREATE TABLE object_state (
            object_key TEXT PRIMARY KEY,
            last_applied TEXT,
            last_failed TEXT,
            updated_at REAL NOT NULL
        )""",
    ),
    (
        # Dedupe compares with the object's latest original delivery (so a return to an earlier
        # revision is seen again); one revision may therefore have several originals.
        "DROP INDEX deliveries_one_original_per_key",
        # A replay restarts the retry budget; received_at stays the time of receipt.
        "ALTER TABLE deliveries ADD COLUMN retry_since REAL",
        "UPDATE deliveries SET retry_since = received_at",
        # Which delivery set the object state: replaying an older one cannot move it back.
        "ALTER TABLE object_state ADD COLUMN applied_by INTEGER",
        "ALTER TABLE object_state ADD COLUMN failed_by INTEGER",
        # Actions outlive retention (their keys keep actions from repeating): no foreign key.
        """CREATE TABLE actions_kept (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL UNIQUE,
            delivery_id INTEGER NOT NULL,
            kind TEXT NOT NULL,
            target TEXT NOT NULL,
            state TEXT NOT NULL,
            result TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "INSERT INTO actions_kept SELECT * FROM actions",
        "DROP TABLE actions",
        "ALTER TABLE actions_kept RENAME TO actions",
        "CREATE INDEX actions_by_delivery ON actions (delivery_id)",
    ),
    (
        # Which source told Fluxback about the deploy: a Flux webhook or the Kubernetes status watch.
        "ALTER TABLE deliveries ADD COLUMN source TEXT NOT NULL DEFAULT 'webhook'",
    ),
    (
        # The head of each object's queue: its oldest unfinished delivery, when it is due and
        # who works on it. Claims read only due, unclaimed heads, so they cost what they return.
        """CREATE TABLE object_heads (
            object_key TEXT PRIMARY KEY,
            delivery_id INTEGER NOT NULL,
            due_at REAL NOT NULL,
            owner TEXT,
            lease_until REAL
        )""",
        "CREATE INDEX object_heads_due ON object_heads (due_at, delivery_id) WHERE owner IS NULL",
        "CREATE INDEX object_heads_lease ON object_heads (lease_until) WHERE owner IS NOT NULL",
        "CREATE INDEX deliveries_unfinished ON deliveries (kind, namespace, name, id)"
        f" WHERE {UNFINISHED_SQL}",
        "INSERT INTO object_heads (object_key, delivery_id, due_at)"  # noqa: S608
        " SELECT d.kind || '/' || d.namespace || '/' || d.name, d.id,"
        " COALESCE(d.next_attempt_at, d.received_at)"
        f" FROM deliveries d WHERE d.id IN (SELECT MIN(id) FROM deliveries WHERE {UNFINISHED_SQL}"
        " GROUP BY kind, namespace, name)",
    ),
)
