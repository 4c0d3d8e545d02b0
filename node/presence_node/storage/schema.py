"""The PostgreSQL schema as an ordered list of migrations.

Migration N is ``MIGRATIONS[N-1]``: a list of statements applied in one
transaction.  Append only: a released migration is never edited, and none
drops data (a rolling restart must keep every record).
"""

from __future__ import annotations

#: pg_advisory_xact_lock key serialising migrations across nodes.
MIGRATION_LOCK = 0x5052_4553  # "PRES"

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE sharing_tags (
            name text PRIMARY KEY,
            owner text,
            epoch bigint NOT NULL,
            since double precision NOT NULL
        )""",
        """CREATE TABLE publications (
            etag text PRIMARY KEY,
            presentity text NOT NULL,
            event text NOT NULL,
            body bytea NOT NULL,
            content_type text NOT NULL,
            expires_at double precision NOT NULL,
            received_at double precision NOT NULL,
            tag text NOT NULL REFERENCES sharing_tags (name)
        )""",
        "CREATE INDEX publications_presentity ON publications (presentity, event)",
        "CREATE INDEX publications_expiry ON publications (tag, expires_at)",
        """CREATE TABLE subscriptions (
            id text PRIMARY KEY,
            call_id text NOT NULL,
            remote_tag text NOT NULL,
            presentity text NOT NULL,
            event text NOT NULL,
            event_header text NOT NULL,
            event_params text NOT NULL,
            watcher text NOT NULL,
            remote_uri text NOT NULL,
            local_uri text NOT NULL,
            contact text NOT NULL,
            routes text NOT NULL,
            transport text NOT NULL,
            source text NOT NULL,
            accept text NOT NULL,
            expires_at double precision NOT NULL,
            remote_cseq bigint NOT NULL,
            cseq bigint NOT NULL,
            version bigint NOT NULL,
            status text NOT NULL,
            tag text NOT NULL REFERENCES sharing_tags (name)
        )""",
        "CREATE INDEX subscriptions_presentity ON subscriptions (presentity, event)",
        "CREATE INDEX subscriptions_expiry ON subscriptions (tag, expires_at)",
        """CREATE TABLE registrations (
            aor text NOT NULL,
            contact text NOT NULL,
            expires_at double precision NOT NULL,
            call_id text NOT NULL,
            cseq bigint NOT NULL,
            PRIMARY KEY (aor, contact)
        )""",
    ],
    [
        # Federation: a replicated publication remembers the location it
        # came from ("" = received here by SIP); answers and syncs send only
        # the latter, and a sync replaces one location's copies at once.
        "ALTER TABLE publications ADD COLUMN origin text NOT NULL DEFAULT ''",
        "CREATE INDEX publications_origin ON publications (origin, presentity, event)",
    ],
]
