"""The non-INVITE transaction tables (sip/transaction.py) driven directly:
sans-I/O, so the test hands them the time, and Timer E, F and J are checked
to the instant without waiting for any of them.  The tables' merged-request
and byte-budget tests are in test_sip_core.py, beside the wire tests of
S03 and #12.8 they back.

Timers (RFC 3261 §17.1.2.2, §17.2.2): E from T1 doubling up to T2 (T2 at
once after a provisional), F at 64*T1, J at 64*T1 over UDP and 0 over TCP.
"""

from __future__ import annotations

import pytest

from presence_node.sip.transaction import (
    IN_PROGRESS,
    RETRANSMIT,
    TIMEOUT,
    ClientTransactions,
    ServerTransactions,
)

T1, T2 = 0.5, 4.0
TIMER_F = TIMER_J = 64 * T1
OK = b"SIP/2.0 200 OK\r\n\r\n"


# -- server side: S03 ---------------------------------------------------------------


def test_server_retransmission_in_progress_is_absorbed_then_answered_with_the_stored_response():
    """S03: a copy that arrives while the first is processed is absorbed
    (nothing to send); once answered, each copy gets that same answer."""
    t = ServerTransactions(T1)
    key = ServerTransactions.key("z9hG4bKa", "10.0.0.1:5060", "PUBLISH", "")
    assert t.begin(key) is None  # new: the caller processes it
    assert t.begin(key) is IN_PROGRESS
    assert t.get(key) is IN_PROGRESS and t.exists(key) and len(t) == 1
    t.complete(key, OK, now=100.0, reliable=False)
    assert t.begin(key) == OK
    assert t.begin(key) == OK
    assert t.get(key) == OK and len(t) == 1


def test_server_keys_tell_branch_sent_by_and_method_apart():
    """RFC 3261 §17.2.3: branch, sent-by and method together; a request
    without an RFC 3261 branch is matched on its RFC 2543 fallback."""
    k = ServerTransactions.key
    keys = {
        k("z9hG4bKa", "h:5060", "PUBLISH", "x"),
        k("z9hG4bKb", "h:5060", "PUBLISH", "x"),
        k("z9hG4bKa", "h:5061", "PUBLISH", "x"),
        k("z9hG4bKa", "h:5060", "SUBSCRIBE", "x"),
        k("old-branch", "h:5060", "PUBLISH", "x"),
    }
    assert len(keys) == 5
    # The fallback ignores a branch without the magic cookie and sent-by.
    assert k("old-branch", "h:5060", "PUBLISH", "x") == k(None, "other:1", "PUBLISH", "x")
    assert k("z9hG4bKa", "h:5060", "PUBLISH", "x") == k("z9hG4bKa", "h:5060", "PUBLISH", "y")


def test_server_timer_j_holds_a_udp_answer_for_64_t1_to_the_instant():
    t = ServerTransactions(T1)
    assert t.begin("k") is None
    t.complete("k", OK, now=100.0, reliable=False)
    t.sweep(100.0 + TIMER_J - 0.001)
    assert t.begin("k") == OK and t.retained > 0
    t.sweep(100.0 + TIMER_J)
    assert not t.exists("k") and t.retained == 0 and len(t) == 0
    assert t.begin("k") is None  # a late copy is a new request


def test_server_timer_j_is_zero_over_tcp():
    """A reliable transport does not retransmit: nothing is kept."""
    t = ServerTransactions(T1)
    assert t.begin("k") is None
    t.complete("k", OK, now=100.0, reliable=True)
    assert not t.exists("k") and t.retained == 0
    assert t.begin("k") is None


def test_server_sweep_forgets_in_completion_order_and_keeps_in_progress_entries():
    """The sweep walks completed entries only: one still being processed
    (a slow database) is never timed out by it."""
    t = ServerTransactions(T1)
    for i, key in enumerate(("a", "b", "c")):
        assert t.begin(key) is None
        t.complete(key, OK, now=float(i), reliable=False)
    assert t.begin("slow") is None
    t.sweep(1.0 + TIMER_J)  # a's and b's Timer J
    assert [k for k in ("a", "b", "c", "slow") if t.exists(k)] == ["c", "slow"]
    t.sweep(10_000.0)
    assert [k for k in ("a", "b", "c", "slow") if t.exists(k)] == ["slow"]
    assert t.begin("slow") is IN_PROGRESS
    assert t.retained == 0 and t.evicted == 0


def test_server_abandon_forgets_only_an_unanswered_request():
    t = ServerTransactions(T1)
    assert t.begin("answered") is None
    t.complete("answered", OK, now=0.0, reliable=False)
    t.abandon("answered")  # too late: its answer stays for retransmissions
    assert t.begin("answered") == OK
    assert t.begin("dropped") is None
    t.abandon("dropped")
    assert not t.exists("dropped")
    t.abandon("never-seen")  # nothing to do
    assert len(t) == 1


def test_server_budget_counts_a_compact_response_at_the_size_given():
    """The caller stores compact responses (not bytes) and says what they
    hold; a flood of them is capped by the budget all the same."""
    one = object()
    t = ServerTransactions(T1, budget=10_000)
    assert t.begin("k0") is None
    t.complete("k0", one, now=0.0, reliable=False, size=600)
    per_entry = t.retained
    assert per_entry >= 600 + len("k0")
    assert t.begin("k0") is one
    for i in range(1, 100):
        assert t.begin(f"k{i}") is None
        t.complete(f"k{i}", object(), now=float(i), reliable=False, size=600)
        assert t.retained <= t.budget
    assert t.evicted == 100 - len(t) and len(t) == t.budget // per_entry
    t.sweep(99.0 + TIMER_J)
    assert t.retained == 0 and len(t) == 0


def test_server_bytes_need_no_size_but_anything_else_does():
    t = ServerTransactions(T1)
    assert t.begin("k") is None
    with pytest.raises(AssertionError):
        t.complete("k", object(), now=0.0, reliable=False)


# -- client side: S26 ---------------------------------------------------------------


def schedule(t: ClientTransactions, until: float, step: float = 0.25) -> list[tuple[float, str]]:
    """What the caller's timer would see, waking at each deadline up to ``until``."""
    out = []
    while True:
        at = t.next_deadline()
        if at is None or at > until:
            return out
        out.extend((at, what) for what, _ in t.due(at))


def test_client_timer_e_doubles_from_t1_to_t2_until_timer_f():
    t = ClientTransactions(T1, T2)
    t.start("b1", b"NOTIFY", "dest", False, "ctx", now=0.0)
    assert t.next_deadline() == T1
    events = schedule(t, 1000.0)
    retransmits = [at for at, what in events if what == RETRANSMIT]
    gaps = [b - a for a, b in zip([0.0, *retransmits], retransmits)]
    assert gaps[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]  # T1, 2T1, 4T1, then T2
    assert all(g == T2 for g in gaps[3:])
    assert events[-1] == (TIMER_F, TIMEOUT)
    assert retransmits[-1] < TIMER_F and len(t) == 0 and t.next_deadline() is None


def test_client_due_hands_back_the_transaction_and_its_context():
    t = ClientTransactions(T1, T2)
    t.start("b1", b"NOTIFY data", ("udp", "1.2.3.4:5060"), False, {"sub": "s1"}, now=10.0)
    assert t.due(10.0 + T1 - 0.001) == []
    [(what, txn)] = t.due(10.0 + T1)
    assert what == RETRANSMIT and txn.data == b"NOTIFY data" and txn.dest == ("udp", "1.2.3.4:5060")
    assert txn.context == {"sub": "s1"}
    [(what, txn)] = t.due(10.0 + TIMER_F)
    assert what == TIMEOUT and txn.branch == "b1"


def test_client_provisional_switches_to_t2_and_final_ends_it():
    t = ClientTransactions(T1, T2)
    t.start("b1", b"x", "d", False, None, now=0.0)
    assert t.on_response("b1", 100, now=0.2) is None  # still running
    assert t.next_deadline() == 0.2 + T2  # the T1 wake-up is stale now
    assert [what for _, what in schedule(t, 0.2 + 3 * T2 + 0.01)] == [RETRANSMIT] * 3
    assert t.on_response("b1", 180, now=13.0) is None  # a second provisional changes nothing
    done = t.on_response("b1", 200, now=13.0)
    assert done is not None and done.branch == "b1"
    assert len(t) == 0 and t.next_deadline() is None
    assert t.on_response("b1", 200, now=13.1) is None  # a retransmitted final: ignored


def test_client_reliable_transport_is_never_retransmitted_but_times_out():
    t = ClientTransactions(T1, T2)
    t.start("b1", b"x", "d", True, None, now=0.0)
    assert t.next_deadline() == TIMER_F
    assert t.on_response("b1", 100, now=1.0) is None
    assert schedule(t, 1000.0) == [(TIMER_F, TIMEOUT)]


def test_client_final_failure_response_ends_it_too():
    """Any final code completes the transaction; what the code means for
    the subscription (S26) is the caller's business."""
    t = ClientTransactions(T1, T2)
    t.start("b1", b"x", "d", False, None, now=0.0)
    assert t.on_response("b1", 481, now=0.1) is not None
    assert schedule(t, 1000.0) == []


def test_client_abort_and_stray_responses():
    t = ClientTransactions(T1, T2)
    t.start("b1", b"x", "d", False, None, now=0.0)
    t.start("b2", b"y", "d", False, None, now=0.1)
    assert t.on_response("nope", 200, now=0.2) is None
    aborted = t.abort("b1")
    assert aborted is not None and aborted.branch == "b1"
    assert t.abort("b1") is None
    assert t.next_deadline() == 0.1 + T1  # b1's entries in the heap are skipped
    assert [txn.branch for _, txn in t.due(TIMER_F + 1)] == ["b2"]


def test_client_transactions_interleave_on_one_heap():
    t = ClientTransactions(T1, T2)
    for i in range(3):
        t.start(f"b{i}", b"x", "d", False, None, now=i * 0.1)
    [(_, first)] = t.due(T1)
    assert first.branch == "b0"
    assert [txn.branch for _, txn in t.due(0.2 + T1)] == ["b1", "b2"]
    t.on_response("b1", 200, now=0.7)
    assert sorted({txn.branch for _, txn in t.due(TIMER_F + 1)}) == ["b0", "b2"]
    assert len(t) == 0
