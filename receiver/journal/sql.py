"""The journal's rules, written once in SQL that SQLite and PostgreSQL both run.

Backends (sqlite.py, postgres.py) supply connections, threads and a few dialect
hooks (sql_lanes.py); everything a delivery goes through is in the `sql_*` modules
that `SqlJournal` composes, so both keep the same semantics by construction and
run the same test suite.

Three things keep the cost of the loop flat as the backlog grows:

- **Heads.** `object_heads` holds one row per Flux object with unfinished work:
  its oldest unfinished delivery, when it is due and who has claimed it. A claim
  reads the due, unclaimed heads from a partial index and touches only the rows
  it returns; finishing a delivery moves the head to the object's next unfinished
  delivery with one index seek. Per-object order follows: only a head is ever
  worked on, and a head has at most one owner.
- **Group commit.** Concurrent `append`s queue up and are written together in one
  transaction (one fsync); each keeps its own savepoint, so one bad event fails
  alone, while a failed commit fails every event of the batch and writes none.
  Each request still gets its answer only after its own row is durable. The
  worker's writes (claims, state changes, decisions, actions) are batched the
  same way on a lane of their own, with a savepoint each, for the same reason: a
  write the database refuses (or a lost claim) concerns one delivery, and its
  neighbours in the batch should not have to be retried for it.
- **One lock order.** Writes that move a head lock their objects (PostgreSQL
  advisory locks) for the whole batch before anything else, in sorted order, as a
  batch of appends does: several writes taking them one by one in their own order
  could deadlock with an append batch or another replica's writes.
- **Separate lanes.** Appends and the worker's writes are separate batches on
  separate connections, so neither queues behind a long line of the other, and
  reads never wait for writes.
"""

from __future__ import annotations

from receiver.journal.sql_claims import SqlClaims
from receiver.journal.sql_ingest import SqlIngest
from receiver.journal.sql_queries import SqlQueries
from receiver.journal.sql_records import SqlRecords


class SqlJournal(SqlIngest, SqlClaims, SqlRecords, SqlQueries):
    """The Journal protocol over a backend's connections, one concern a module: appends
    (sql_ingest.py), heads and claims (sql_claims.py), the pipeline's records and retention
    (sql_records.py), reads (sql_queries.py), all on the lanes and hooks of sql_lanes.py and
    the row mapping of sql_rows.py. A backend subclasses it and supplies the hooks."""
