"""The PostgreSQL schema as an ordered list of migrations.

Migration N is ``MIGRATIONS[N-1]``: a list of statements applied in one
transaction.  Append only: a released migration is never edited, and none
drops data (a rolling restart must keep every record).
"""

from __future__ import annotations

#: pg_advisory_xact_lock key serialising migrations across nodes.
MIGRATION_LOCK = 0x5052_4553  # "PRES"
#: First key of the presentity bucket locks (migration 3); the second is the bucket.
PRESENTITY_LOCK = 0x5052_4554
PRESENTITY_BUCKETS = 128
#: LISTEN channels (migration 6): "a NOTIFY waits for you" (payload: the
#: owner's node id) and "a tag changed owner".
NOTIFY_CHANNEL = "presence_notify"
TAGS_CHANNEL = "presence_tags"
#: First key of the session lock a node's LISTEN connection holds while it
#: listens (migration 6); the second is hashtext(node id).
LISTENER_LOCK = 0x5052_4555

#: The subscription columns as of migration 6 (the ended-subscription copies).
_SUB6 = (
    "id, call_id, remote_tag, presentity, event, event_header, event_params, watcher, remote_uri, local_uri, "
    "contact, routes, transport, source, accept, expires_at, remote_cseq, cseq, version, status, tag"
)

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
    [
        # One statement per initial PUBLISH and per SUBSCRIBE (storage/
        # postgres.py): the write and the read that follows it run in one
        # function, so the write is not yet committed when the read runs.
        # Without a lock, a PUBLISH and a SUBSCRIBE of one presentity could
        # then each miss the other (the watcher would never get that
        # state).  Every write of a publication takes a shared lock of the
        # presentity's bucket, every new subscription an exclusive one, held
        # until commit; the read after the write takes a fresh snapshot (a
        # volatile PL/pgSQL function does per statement), so whichever
        # comes second sees the first.  128 buckets bound the locks one
        # bulk statement (an expiry sweep) holds; shared locks never wait
        # for each other, so bulk writers cannot deadlock on them.
        f"""CREATE FUNCTION presence_bucket(presentity text) RETURNS integer
            LANGUAGE sql IMMUTABLE AS $$ SELECT hashtext(presentity) & {PRESENTITY_BUCKETS - 1} $$""",
        f"""CREATE FUNCTION publications_lock_presentity() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_advisory_xact_lock_shared({PRESENTITY_LOCK}, presence_bucket(OLD.presentity));
                RETURN OLD;
            END IF;
            PERFORM pg_advisory_xact_lock_shared({PRESENTITY_LOCK}, presence_bucket(NEW.presentity));
            RETURN NEW;
        END $$""",
        """CREATE TRIGGER publications_lock_presentity BEFORE INSERT OR UPDATE OR DELETE ON publications
            FOR EACH ROW EXECUTE FUNCTION publications_lock_presentity()""",
        f"""CREATE FUNCTION subscriptions_lock_presentity() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock({PRESENTITY_LOCK}, presence_bucket(NEW.presentity));
            RETURN NEW;
        END $$""",
        """CREATE TRIGGER subscriptions_lock_presentity BEFORE INSERT ON subscriptions
            FOR EACH ROW EXECUTE FUNCTION subscriptions_lock_presentity()""",
        # A new publication and the live watchers of its presentity/package.
        """CREATE FUNCTION presence_publish(p_presentity text, p_event text, p_etag text, p_body bytea,
                p_content_type text, p_expires_at double precision, p_received_at double precision, p_tag text,
                p_now double precision)
            RETURNS SETOF subscriptions LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO publications (presentity, event, etag, body, content_type, expires_at, received_at, tag)
                VALUES (p_presentity, p_event, p_etag, p_body, p_content_type, p_expires_at, p_received_at, p_tag);
            RETURN QUERY SELECT * FROM subscriptions s
                WHERE s.presentity = p_presentity AND s.event = p_event AND s.expires_at > p_now;
        END $$""",
        # A new subscription, the live publications of its presentity and
        # package (its first NOTIFY), and how many live subscriptions of
        # package p_watchers_of the presentity has (0 when NULL): one row
        # per publication, or one row of NULLs after the count when none.
        """CREATE FUNCTION presence_subscribe(p_id text, p_call_id text, p_remote_tag text, p_presentity text,
                p_event text, p_event_header text, p_event_params text, p_watcher text, p_remote_uri text,
                p_local_uri text, p_contact text, p_routes text, p_transport text, p_source text, p_accept text,
                p_expires_at double precision, p_remote_cseq bigint, p_cseq bigint, p_version bigint,
                p_status text, p_tag text, p_now double precision, p_watchers_of text)
            RETURNS TABLE (o_watchers bigint, o_presentity text, o_event text, o_etag text, o_body bytea,
                o_content_type text, o_expires_at double precision, o_received_at double precision, o_tag text,
                o_origin text)
            LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO subscriptions (id, call_id, remote_tag, presentity, event, event_header, event_params,
                    watcher, remote_uri, local_uri, contact, routes, transport, source, accept, expires_at,
                    remote_cseq, cseq, version, status, tag)
                VALUES (p_id, p_call_id, p_remote_tag, p_presentity, p_event, p_event_header, p_event_params,
                    p_watcher, p_remote_uri, p_local_uri, p_contact, p_routes, p_transport, p_source, p_accept,
                    p_expires_at, p_remote_cseq, p_cseq, p_version, p_status, p_tag);
            RETURN QUERY
                SELECT w.n, p.presentity, p.event, p.etag, p.body, p.content_type, p.expires_at, p.received_at,
                       p.tag, p.origin
                FROM (SELECT count(*) AS n FROM subscriptions s WHERE p_watchers_of IS NOT NULL
                        AND s.presentity = p_presentity AND s.event = p_watchers_of AND s.expires_at > p_now) w
                LEFT JOIN LATERAL (SELECT * FROM publications q WHERE q.presentity = p_presentity
                        AND q.event = p_event AND q.expires_at > p_now) p ON true
                ORDER BY p.received_at, p.etag;
        END $$""",
    ],
    [
        # Group commit (storage/batching.py): several PUBLISHes, or several
        # SUBSCRIBEs, in one transaction hold several bucket locks at once.
        # Two such transactions taking them in different orders could
        # deadlock, so every statement that may lock more than one bucket
        # first takes them all here, in ascending order (a batch, the
        # expiry sweep, a federation resync); the triggers then find them
        # held.  Returns the buckets, ascending.
        f"""CREATE FUNCTION presence_lock_buckets(p_presentities text[], p_exclusive boolean)
            RETURNS integer[] LANGUAGE plpgsql AS $$
        DECLARE
            buckets integer[] := ARRAY(SELECT DISTINCT presence_bucket(x) FROM unnest(p_presentities) x ORDER BY 1);
            b integer;
        BEGIN
            FOREACH b IN ARRAY buckets LOOP
                IF p_exclusive THEN
                    PERFORM pg_advisory_xact_lock({PRESENTITY_LOCK}, b);
                ELSE
                    PERFORM pg_advisory_xact_lock_shared({PRESENTITY_LOCK}, b);
                END IF;
            END LOOP;
            RETURN buckets;
        END $$""",
        # The expiry sweep of migration 1, its buckets locked first: it
        # takes only rows of the buckets it locked (the rest wait for the
        # next sweep), and row locks only once it holds them.
        f"""CREATE FUNCTION presence_expire_publications(p_node text, p_now double precision, p_limit integer)
            RETURNS SETOF publications LANGUAGE plpgsql AS $$
        DECLARE
            buckets integer[] := presence_lock_buckets(ARRAY(
                SELECT p.presentity FROM publications p JOIN sharing_tags t ON p.tag = t.name
                WHERE t.owner = p_node AND p.expires_at <= p_now LIMIT p_limit), false);
        BEGIN
            RETURN QUERY
                WITH owned AS (SELECT name FROM sharing_tags WHERE owner = p_node FOR SHARE),
                victims AS (
                    SELECT p.etag FROM publications p JOIN owned ON p.tag = owned.name
                    WHERE p.expires_at <= p_now AND presence_bucket(p.presentity) = ANY(buckets)
                    LIMIT p_limit FOR UPDATE OF p SKIP LOCKED
                )
                DELETE FROM publications p USING victims WHERE p.etag = victims.etag RETURNING p.*;
        END $$""",
    ],
    [
        # The NOTIFYs of a state change (next_notify_state): the watchers'
        # next CSeqs and versions, then the state, as a function so that
        # several can share a statement (group commit).  Rows: one per
        # watcher (the publication columns NULL), then one per publication
        # (the first three NULL).  The publications are read after the
        # increments (a fresh snapshot), so they are at least as new.
        """CREATE FUNCTION presence_next_notify(p_ids text[], p_presentity text, p_event text,
                p_now double precision)
            RETURNS TABLE (o_id text, o_cseq bigint, o_version bigint, o_presentity text, o_event text,
                o_etag text, o_body bytea, o_content_type text, o_expires_at double precision,
                o_received_at double precision, o_tag text, o_origin text)
            LANGUAGE plpgsql AS $$
        BEGIN
            RETURN QUERY UPDATE subscriptions s SET cseq = s.cseq + 1, version = s.version + 1
                WHERE s.id = ANY(p_ids)
                RETURNING s.id, s.cseq, s.version - 1, NULL::text, NULL::text, NULL::text, NULL::bytea,
                    NULL::text, NULL::double precision, NULL::double precision, NULL::text, NULL::text;
            RETURN QUERY SELECT NULL::text, NULL::bigint, NULL::bigint, p.presentity, p.event, p.etag, p.body,
                    p.content_type, p.expires_at, p.received_at, p.tag, p.origin
                FROM publications p
                WHERE p.presentity = p_presentity AND p.event = p_event AND p.expires_at > p_now;
        END $$""",
    ],
    [
        # Live-state limits (#12): the source IP of each publication and
        # binding (subscriptions have theirs), so the periodic recount
        # (PostgresStorage.refresh_usage) tells each source's share; and a
        # sharing tag per binding, so that its owner prunes it once expired,
        # as every other timer duty.  Bindings stored before have none: any
        # node prunes those (pruning a binding notifies nobody).
        "ALTER TABLE publications ADD COLUMN source text NOT NULL DEFAULT ''",
        "ALTER TABLE registrations ADD COLUMN source text NOT NULL DEFAULT ''",
        "ALTER TABLE registrations ADD COLUMN tag text REFERENCES sharing_tags (name)",
        "CREATE INDEX registrations_expiry ON registrations (tag, expires_at)",
        # Only the owner of a subscription's tag sends its NOTIFYs (service/
        # owners.py): one sender per dialog, so CSeqs go out in order and
        # rate control (D7) holds cluster-wide.  A change seen by another
        # node leaves a row here for the owner of each watcher tag it does
        # not own, and wakes that owner (pg_notify, delivered at commit); the
        # owner takes the rows and notifies.  sub_id "" means every watcher of
        # (presentity, event) under the tag; otherwise one subscription (its
        # first NOTIFY, or a refresh's).  Only a listening owner is queued
        # for; a row left by an owner that died since waits for the tag's
        # next owner.
        """CREATE TABLE notify_queue (
            tag text NOT NULL,
            presentity text NOT NULL,
            event text NOT NULL,
            sub_id text NOT NULL,
            changes bigint NOT NULL DEFAULT 1,
            PRIMARY KEY (tag, presentity, event, sub_id)
        )""",
        # Subscriptions ended by a node that does not own their tag (an
        # unsubscribe through the HA backup), waiting for the owner to send
        # the terminated NOTIFY after any NOTIFY of its own in flight.
        f"CREATE TABLE ended_subscriptions AS SELECT {_SUB6}, NULL::text AS reason FROM subscriptions WITH NO DATA",
        "ALTER TABLE ended_subscriptions ADD PRIMARY KEY (id)",
        "CREATE INDEX ended_subscriptions_tag ON ended_subscriptions (tag)",
        # Whether a node listens (its LISTEN connection holds its lock): a
        # change for a tag whose owner does not (dead, stopped, cut off) is
        # sent by the node that saw it, as nobody else can be sending.  The
        # test takes the lock shared, so concurrent tests never fail each
        # other; an owner (re)connecting waits for them to commit.
        f"""CREATE FUNCTION presence_listening(p_node text) RETURNS boolean LANGUAGE sql AS $$
            SELECT NOT pg_try_advisory_xact_lock_shared({LISTENER_LOCK}, hashtext(p_node)) $$""",
        # The queue row of a change, for one tag.  DO UPDATE, not DO NOTHING:
        # it row-locks a row already queued, so an owner taking it
        # concurrently skips it (SKIP LOCKED) and takes it again once this
        # change commits, instead of reading the state before it.
        f"""CREATE FUNCTION presence_queue(p_tag text, p_presentity text, p_event text, p_sub_id text,
                p_owner text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO notify_queue (tag, presentity, event, sub_id) VALUES (p_tag, p_presentity, p_event, p_sub_id)
                ON CONFLICT (tag, presentity, event, sub_id) DO UPDATE SET changes = notify_queue.changes + 1;
            PERFORM pg_notify('{NOTIFY_CHANNEL}', p_owner);
        END $$""",
        # The watchers of a change that p_node sends to: those under tags it
        # owns, or whose owner is not listening (every one when p_node is
        # NULL).  The others are queued for their owners, tag by tag in
        # order (as every node does, so two batches lock queue rows in the
        # same order).
        """CREATE FUNCTION presence_route(p_presentity text, p_event text, p_now double precision, p_node text)
            RETURNS SETOF subscriptions LANGUAGE plpgsql AS $$
        DECLARE
            t text;
            o text;
            unattended text[] := '{}';
        BEGIN
            IF p_node IS NOT NULL THEN
                FOR t, o IN SELECT DISTINCT s.tag, g.owner FROM subscriptions s JOIN sharing_tags g ON g.name = s.tag
                        WHERE s.presentity = p_presentity AND s.event = p_event AND s.expires_at > p_now
                          AND g.owner IS DISTINCT FROM p_node ORDER BY 1 LOOP
                    IF o IS NOT NULL AND presence_listening(o) THEN
                        PERFORM presence_queue(t, p_presentity, p_event, '', o);
                    ELSE
                        unattended := unattended || t;
                    END IF;
                END LOOP;
            END IF;
            RETURN QUERY SELECT s.* FROM subscriptions s JOIN sharing_tags g ON g.name = s.tag
                WHERE s.presentity = p_presentity AND s.event = p_event AND s.expires_at > p_now
                  AND (p_node IS NULL OR g.owner = p_node OR s.tag = ANY(unattended));
        END $$""",
        # presence_publish of migration 3 with the publication's source, the
        # per-presentity cap (#12), counted in the same statement (an index
        # range of at most p_cap rows; at the cap nothing is written and the
        # one row returned is all NULL), and its watchers routed (#13.1).
        # An overload, so nodes not yet upgraded keep calling the old one.
        """CREATE FUNCTION presence_publish(p_presentity text, p_event text, p_etag text, p_body bytea,
                p_content_type text, p_expires_at double precision, p_received_at double precision, p_tag text,
                p_now double precision, p_source text, p_cap bigint, p_node text)
            RETURNS SETOF subscriptions LANGUAGE plpgsql AS $$
        BEGIN
            IF (SELECT count(*) FROM (SELECT 1 FROM publications q WHERE q.presentity = p_presentity
                    AND q.event = p_event LIMIT p_cap) c) >= p_cap THEN
                RETURN QUERY SELECT (NULL::subscriptions).*;
                RETURN;
            END IF;
            INSERT INTO publications (presentity, event, etag, body, content_type, expires_at, received_at, tag,
                    source)
                VALUES (p_presentity, p_event, p_etag, p_body, p_content_type, p_expires_at, p_received_at, p_tag,
                    p_source);
            RETURN QUERY SELECT * FROM presence_route(p_presentity, p_event, p_now, p_node);
        END $$""",
        # NOTIFYs of single subscriptions (a first NOTIFY, a refresh's)
        # requested by p_node: queued for the owners of their tags, except
        # the ids returned, whose owner is p_node, nobody, or not listening:
        # p_node sends those.
        """CREATE FUNCTION presence_pass_on(p_ids text[], p_node text) RETURNS SETOF text LANGUAGE plpgsql AS $$
        DECLARE
            r record;
        BEGIN
            FOR r IN SELECT s.id, s.tag, s.presentity, s.event, g.owner FROM subscriptions s
                    JOIN sharing_tags g ON g.name = s.tag WHERE s.id = ANY(p_ids)
                    ORDER BY s.tag, s.presentity, s.event, s.id LOOP
                IF r.owner IS DISTINCT FROM p_node AND r.owner IS NOT NULL AND presence_listening(r.owner) THEN
                    PERFORM presence_queue(r.tag, r.presentity, r.event, r.id, r.owner);
                ELSE
                    RETURN NEXT r.id;
                END IF;
            END LOOP;
        END $$""",
        # Remove a subscription for p_node (an unsubscribe).  Returned with
        # its reason when the owner of its tag, listening, sends the
        # terminated NOTIFY (after any of its own in flight); with reason
        # NULL when p_node sends it (as presence_pass_on).
        f"""CREATE FUNCTION presence_end_subscription(p_id text, p_reason text, p_node text)
            RETURNS SETOF ended_subscriptions LANGUAGE plpgsql AS $$
        DECLARE
            s subscriptions;
            o text;
        BEGIN
            DELETE FROM subscriptions WHERE id = p_id RETURNING * INTO s;
            IF NOT FOUND THEN
                RETURN;
            END IF;
            o := (SELECT owner FROM sharing_tags WHERE name = s.tag);
            IF o IS DISTINCT FROM p_node AND o IS NOT NULL AND presence_listening(o) THEN
                INSERT INTO ended_subscriptions ({_SUB6}, reason)
                    VALUES ({', '.join('s.' + c for c in _SUB6.split(', '))}, p_reason);
                PERFORM pg_notify('{NOTIFY_CHANNEL}', o);
                RETURN QUERY SELECT {', '.join('s.' + c for c in _SUB6.split(', '))}, p_reason;
            ELSE
                RETURN QUERY SELECT {', '.join('s.' + c for c in _SUB6.split(', '))}, NULL::text;
            END IF;
        END $$""",
        # What waits for p_node under the tags it owns now: the live
        # subscriptions to notify (reason NULL) and the ended ones (reason
        # set).  Rows a change still holds are skipped: its commit wakes
        # the owner again.
        f"""CREATE FUNCTION presence_take_notifies(p_node text, p_now double precision)
            RETURNS SETOF ended_subscriptions LANGUAGE plpgsql AS $$
        BEGIN
            RETURN QUERY
                WITH owned AS (SELECT name FROM sharing_tags WHERE owner = p_node FOR SHARE),
                mine AS (
                    SELECT n.tag, n.presentity, n.event, n.sub_id FROM notify_queue n JOIN owned ON n.tag = owned.name
                    FOR UPDATE OF n SKIP LOCKED
                ),
                taken AS (
                    DELETE FROM notify_queue n USING mine WHERE (n.tag, n.presentity, n.event, n.sub_id)
                        = (mine.tag, mine.presentity, mine.event, mine.sub_id)
                    RETURNING n.tag, n.presentity, n.event, n.sub_id
                )
                SELECT {', '.join('s.' + c for c in _SUB6.split(', '))}, NULL::text
                FROM taken q JOIN subscriptions s ON s.presentity = q.presentity AND s.event = q.event
                WHERE q.sub_id = '' AND s.tag = q.tag AND s.expires_at > p_now
                UNION ALL
                SELECT {', '.join('s.' + c for c in _SUB6.split(', '))}, NULL::text
                FROM taken q JOIN subscriptions s ON s.id = q.sub_id;
            RETURN QUERY
                DELETE FROM ended_subscriptions e USING sharing_tags g
                WHERE g.name = e.tag AND g.owner = p_node RETURNING e.*;
        END $$""",
        # Every node re-reads which tags it owns when one changes owner.
        f"""CREATE FUNCTION sharing_tags_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{TAGS_CHANNEL}', NEW.name);
            RETURN NULL;
        END $$""",
        """CREATE TRIGGER sharing_tags_changed AFTER INSERT OR UPDATE OF owner ON sharing_tags
            FOR EACH ROW EXECUTE FUNCTION sharing_tags_changed()""",
    ],
    [
        # One agreed sender per tag at every moment, even while its owner is
        # dead or cut off (#13.1 with kills).  Migration 6 let every node
        # that saw a change for an unattended tag send it; two nodes seeing
        # changes at once (two publishers) then sent one dialog's NOTIFYs
        # side by side and the watcher got lower CSeqs after higher ones.
        # Now the sender of a tag is its owner while it listens, otherwise
        # the lowest-named listening node (the nodes are those with a
        # private tag): decided here, so every node agrees.  Holding the
        # changes for the tag's next owner instead would leave its watchers
        # silent until a failover, or for good if nobody moves the tag (S80).
        # Deciding locks the non-listening candidates' keys shared until
        # commit, so a node (re)starting to listen waits for every statement
        # that decided without it.  Only when nobody listens at all does the
        # node that saw the change send (NULL).
        """CREATE FUNCTION presence_sender(p_owner text) RETURNS text LANGUAGE plpgsql AS $$
        DECLARE
            n text;
        BEGIN
            IF p_owner IS NOT NULL AND presence_listening(p_owner) THEN
                RETURN p_owner;
            END IF;
            FOR n IN SELECT owner FROM sharing_tags WHERE name LIKE '~%' AND owner IS NOT NULL ORDER BY owner LOOP
                IF presence_listening(n) THEN
                    RETURN n;
                END IF;
            END LOOP;
            RETURN NULL;
        END $$""",
        # The watchers of a change that p_node sends to (every one when
        # p_node is NULL); the others are queued for their tags' senders,
        # tag by tag in order (as every node does, so two batches lock
        # queue rows in the same order).
        """CREATE OR REPLACE FUNCTION presence_route(p_presentity text, p_event text, p_now double precision,
                p_node text) RETURNS SETOF subscriptions LANGUAGE plpgsql AS $$
        DECLARE
            t text;
            o text;
            mine text[] := '{}';
        BEGIN
            IF p_node IS NULL THEN
                RETURN QUERY SELECT s.* FROM subscriptions s
                    WHERE s.presentity = p_presentity AND s.event = p_event AND s.expires_at > p_now;
                RETURN;
            END IF;
            FOR t, o IN SELECT DISTINCT s.tag, g.owner FROM subscriptions s JOIN sharing_tags g ON g.name = s.tag
                    WHERE s.presentity = p_presentity AND s.event = p_event AND s.expires_at > p_now ORDER BY 1 LOOP
                o := coalesce(presence_sender(o), p_node);
                IF o = p_node THEN
                    mine := mine || t;
                ELSE
                    PERFORM presence_queue(t, p_presentity, p_event, '', o);
                END IF;
            END LOOP;
            RETURN QUERY SELECT s.* FROM subscriptions s
                WHERE s.presentity = p_presentity AND s.event = p_event AND s.expires_at > p_now
                  AND s.tag = ANY(mine);
        END $$""",
        # Single NOTIFYs requested by p_node: queued for their tags'
        # senders, except the ids returned, which p_node sends.
        """CREATE OR REPLACE FUNCTION presence_pass_on(p_ids text[], p_node text) RETURNS SETOF text
            LANGUAGE plpgsql AS $$
        DECLARE
            r record;
            o text;
        BEGIN
            FOR r IN SELECT s.id, s.tag, s.presentity, s.event, g.owner FROM subscriptions s
                    JOIN sharing_tags g ON g.name = s.tag WHERE s.id = ANY(p_ids)
                    ORDER BY s.tag, s.presentity, s.event, s.id LOOP
                o := coalesce(presence_sender(r.owner), p_node);
                IF o <> p_node THEN
                    PERFORM presence_queue(r.tag, r.presentity, r.event, r.id, o);
                ELSE
                    RETURN NEXT r.id;
                END IF;
            END LOOP;
        END $$""",
        # Remove a subscription for p_node (an unsubscribe): returned with
        # its reason when its tag's sender, another node, sends the
        # terminated NOTIFY; with reason NULL when p_node does.
        f"""CREATE OR REPLACE FUNCTION presence_end_subscription(p_id text, p_reason text, p_node text)
            RETURNS SETOF ended_subscriptions LANGUAGE plpgsql AS $$
        DECLARE
            s subscriptions;
            o text;
        BEGIN
            DELETE FROM subscriptions WHERE id = p_id RETURNING * INTO s;
            IF NOT FOUND THEN
                RETURN;
            END IF;
            o := coalesce(presence_sender((SELECT owner FROM sharing_tags WHERE name = s.tag)), p_node);
            IF o <> p_node THEN
                INSERT INTO ended_subscriptions ({_SUB6}, reason)
                    VALUES ({', '.join('s.' + c for c in _SUB6.split(', '))}, p_reason);
                PERFORM pg_notify('{NOTIFY_CHANNEL}', o);
                RETURN QUERY SELECT {', '.join('s.' + c for c in _SUB6.split(', '))}, p_reason;
            ELSE
                RETURN QUERY SELECT {', '.join('s.' + c for c in _SUB6.split(', '))}, NULL::text;
            END IF;
        END $$""",
        # The tags p_node sends for now (those whose coalesce(
        # presence_sender(owner), p_node) is p_node, the stand-in looked up
        # once): on the path of every NOTIFY.
        """CREATE FUNCTION presence_sends(p_node text) RETURNS text[] LANGUAGE plpgsql AS $$
        DECLARE
            standin boolean := coalesce(presence_sender(NULL), p_node) = p_node;
        BEGIN
            RETURN ARRAY(SELECT name FROM sharing_tags WHERE CASE
                WHEN owner = p_node THEN standin OR presence_listening(p_node)
                WHEN owner IS NULL OR NOT standin THEN standin
                ELSE NOT presence_listening(owner) END ORDER BY name);
        END $$""",
        # presence_next_notify of migration 5 for a sender, p_node: only
        # the CSeqs of subscriptions under tags it sends for are counted.
        # A node that stopped being a tag's sender between reading a
        # change's watchers and counting their CSeqs gets no number (and
        # passes the NOTIFY on): the next sender's CSeqs are never counted
        # beside its own.  The check locks the keys of non-listening
        # candidates until commit, so a node starting to listen waits for
        # the counts decided without it.
        """CREATE FUNCTION presence_next_notify(p_ids text[], p_presentity text, p_event text,
                p_now double precision, p_node text)
            RETURNS TABLE (o_id text, o_cseq bigint, o_version bigint, o_presentity text, o_event text,
                o_etag text, o_body bytea, o_content_type text, o_expires_at double precision,
                o_received_at double precision, o_tag text, o_origin text)
            LANGUAGE plpgsql AS $$
        DECLARE
            -- The common case, a listening owner, checked first: cheap.
            owned text[] := CASE WHEN presence_listening(p_node)
                THEN ARRAY(SELECT name FROM sharing_tags WHERE owner = p_node) END;
        BEGIN
            RETURN QUERY UPDATE subscriptions s SET cseq = s.cseq + 1, version = s.version + 1
                WHERE s.id = ANY(p_ids) AND CASE WHEN s.tag = ANY(owned) THEN true
                    ELSE s.tag = ANY(presence_sends(p_node)) END
                RETURNING s.id, s.cseq, s.version - 1, NULL::text, NULL::text, NULL::text, NULL::bytea,
                    NULL::text, NULL::double precision, NULL::double precision, NULL::text, NULL::text;
            RETURN QUERY SELECT NULL::text, NULL::bigint, NULL::bigint, p.presentity, p.event, p.etag, p.body,
                    p.content_type, p.expires_at, p.received_at, p.tag, p.origin
                FROM publications p
                WHERE p.presentity = p_presentity AND p.event = p_event AND p.expires_at > p_now;
        END $$""",
        # What waits under the tags p_node sends for now (whoever it was
        # queued for: a row left for a sender that died since is taken by
        # the next).  Rows a change still holds are skipped: its commit
        # wakes the sender again.
        f"""CREATE OR REPLACE FUNCTION presence_take_notifies(p_node text, p_now double precision)
            RETURNS SETOF ended_subscriptions LANGUAGE plpgsql AS $$
        DECLARE
            tags text[] := ARRAY(SELECT name FROM sharing_tags WHERE name = ANY(presence_sends(p_node)) FOR SHARE);
        BEGIN
            RETURN QUERY
                WITH mine AS (
                    SELECT n.tag, n.presentity, n.event, n.sub_id FROM notify_queue n WHERE n.tag = ANY(tags)
                    FOR UPDATE OF n SKIP LOCKED
                ),
                taken AS (
                    DELETE FROM notify_queue n USING mine WHERE (n.tag, n.presentity, n.event, n.sub_id)
                        = (mine.tag, mine.presentity, mine.event, mine.sub_id)
                    RETURNING n.tag, n.presentity, n.event, n.sub_id
                )
                SELECT {', '.join('s.' + c for c in _SUB6.split(', '))}, NULL::text
                FROM taken q JOIN subscriptions s ON s.presentity = q.presentity AND s.event = q.event
                WHERE q.sub_id = '' AND s.tag = q.tag AND s.expires_at > p_now
                UNION ALL
                SELECT {', '.join('s.' + c for c in _SUB6.split(', '))}, NULL::text
                FROM taken q JOIN subscriptions s ON s.id = q.sub_id;
            RETURN QUERY
                DELETE FROM ended_subscriptions e WHERE e.tag = ANY(tags) RETURNING e.*;
        END $$""",
    ],
    # 8 (#15.1): the users that may authenticate, by digest username and
    # realm, as HA1 hashes only (never a password).
    [
        """CREATE TABLE subscribers (
            username text NOT NULL,
            realm text NOT NULL,
            aor text NOT NULL,
            ha1_md5 text NOT NULL,
            ha1_sha256 text NOT NULL,
            PRIMARY KEY (username, realm)
        )""",
    ],
    # 9 (#15.3): per-presentity allow (true) or deny (false) of a watcher.
    [
        """CREATE TABLE watcher_rules (
            presentity text NOT NULL,
            watcher text NOT NULL,
            allow boolean NOT NULL,
            PRIMARY KEY (presentity, watcher)
        )""",
    ],
]
