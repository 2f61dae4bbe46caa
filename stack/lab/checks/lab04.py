"""Lab 4: a read/write router with a read-your-writes guarantee, on the live primary/replica pair."""
from __future__ import annotations

from ...clients import lsn_to_int
from ...course.predictions import as_predicted
from ..registry import Verdict, check_definition
from ... import quiet
from ._cases import first_mismatch

LAB = "lab04"


# -- 1. which server a statement goes to ------------------------------------------------

def reference_route(statement):
    words = statement.strip().lower().split()
    if words and words[0] == "select" and " for update" not in f" {' '.join(words)}" \
            and " for share" not in f" {' '.join(words)}":
        return "replica"
    return "primary"


ROUTE_TURNS = (
    (lambda q: "replica", "Everything went to the replica: a standby refuses writes (it is read-only)."),
    (lambda q: "replica" if q.startswith("SELECT") else "primary",
     "SQL keywords are not case sensitive, and a statement may start with spaces or a newline: "
     "normalise before you look at the first word."),
    (lambda q: "replica" if q.strip().lower().startswith("select") else "primary",
     "SELECT ... FOR UPDATE / FOR SHARE locks rows, and only the primary can take locks: route it there."),
)

ROUTE_CASES = [("SELECT * FROM users WHERE id = %s",), ("INSERT INTO users (name, email) VALUES (%s, %s)",),
               ("select name from users where id = 7",), ("UPDATE users SET name = %s WHERE id = %s",),
               ("\n   SELECT count(*) FROM users",), ("DELETE FROM users WHERE id = %s",),
               ("SELECT * FROM users WHERE id = %s FOR UPDATE",), ("select id from users for share",),
               ("Select 1",)]


@check_definition("route", LAB, "send each statement to the primary or the replica", hints=(
    "A streaming replica is read-only: it can answer a plain read, nothing that changes data or takes a lock.",
    "Look at the statement's first keyword, ignoring case and leading blanks: a read goes to the replica; "
    "anything else, and a read that locks rows (FOR UPDATE, FOR SHARE), goes to the primary.",
    "Worked example with other statements: '  Select email FROM orders' -> replica; "
    "'TRUNCATE orders' -> primary; 'SELECT * FROM orders FOR SHARE' -> primary.",
))
def check_route(fn):
    return first_mismatch(fn, ROUTE_CASES, reference_route, compare=lambda a, b: a == b,
                          wrong_turns=ROUTE_TURNS, describe=lambda a: repr(a[0]))


# -- 2. has the replica replayed past a write? -----------------------------------------------

def reference_read_target(last_write_lsn, replay_lsn):
    if last_write_lsn is None:
        return "replica"
    return "replica" if lsn_to_int(replay_lsn) >= lsn_to_int(last_write_lsn) else "primary"


def _flat(lsn):
    return int(str(lsn).replace("/", ""), 16)


TARGET_TURNS = (
    (lambda w, r: "replica" if w is None or r >= w else "primary",
     "Compared the LSNs as text: '0/9000000' sorts after '0/10000000' as a string. Turn each into a number."),
    (lambda w, r: "replica" if w is None or lsn_to_int(r) > lsn_to_int(w) else "primary",
     "Equal positions mean the replica has replayed exactly up to your write: it can serve the read."),
    (lambda w, r: "replica" if w is None or int(r.split("/")[1], 16) >= int(w.split("/")[1], 16) else "primary",
     "Only the part after the slash was compared: the part before it is the high 32 bits of the position."),
    (lambda w, r: "replica" if w is None or _flat(r) >= _flat(w) else "primary",
     "Removing the slash glues two numbers together; PostgreSQL drops leading zeros, so the digits shift. "
     "The part before the slash is worth 2**32 each."),
)

TARGET_CASES = [(None, "0/3000060"), ("0/3000060", "0/3000060"), ("0/3000060", "0/3000028"),
                ("0/9000000", "0/10000000"), ("0/10000000", "0/9000000"), ("1/0", "0/FFFFFFFF"),
                ("0/FFFFFFFF", "1/0"), ("16/B374D848", "16/B374D850"), ("2/1A", "1/FF00000A")]


@check_definition("read_target", LAB, "after a write, read from the primary until the replica has replayed it",
                  hints=(
    "Every change has a position in the WAL (an LSN such as '16/B374D848'). The replica has applied your "
    "write once its replay position has reached the position the primary reported after the write.",
    "No write yet: the replica. Otherwise turn both LSNs into numbers (the part before the slash times 2**32, "
    "plus the part after it, both hexadecimal) and read from the replica only if replayed >= written.",
    "Worked example with other numbers: written '3/20', replayed '2/FFFFFFF0': 3 x 2**32 + 32 = 12884901920 "
    "against 2 x 2**32 + 4294967280 = 12884901872: not yet, so the primary.",
))
def check_read_target(fn):
    return first_mismatch(fn, TARGET_CASES, reference_read_target, compare=lambda a, b: a == b,
                          wrong_turns=TARGET_TURNS,
                          describe=lambda a: f"last_write_lsn={a[0]!r}, replay_lsn={a[1]!r}")


# -- 3. the router, on the live pair ------------------------------------------------------

ROUTER_DELAY_MS = 300
READ_AFTER_S = (0.0, 0.15, 0.45)      # the last read comes well after the replica has caught up


@check_definition("rw_router", LAB, "your router on the live stack, with the replica 300 ms behind", hints=(
    "The router must remember, per client, where its last write ended, and ask the replica how far it has "
    "replayed before each read of that client.",
    "In write(): run the statement on the primary, then ask the primary for pg_current_wal_lsn() and keep it "
    "for that client. In read(): for a client with a kept LSN, ask the replica for pg_last_wal_replay_lsn() "
    "and use read_target to choose the connection. Other clients read the replica.",
    "Worked example with other numbers: client 'ann' writes and the primary reports '0/5000100'; 50 ms later "
    "the replica reports '0/5000000': ann reads the primary; 400 ms later it reports '0/5000180': the replica, "
    "and ann's kept LSN can be forgotten. Client 'bob' never wrote: the replica every time.",
), needs_stack=True)
@quiet.measurement      # timed against the live servers: the machine to itself in a parallel test run
def check_rw_router(router_class):
    from ...course.replication import router_trial
    from ._live import learner_stack
    if not callable(router_class):
        return Verdict(False, "a class", router_class, "Pass the class itself: check(\"rw_router\", Router).")
    stack = learner_stack()
    before = stack.applied().postgres.replica_delay_ms
    stack.apply(replica_delay_ms=ROUTER_DELAY_MS)
    try:
        trial = router_trial(stack, router_class, writes=4, first_user=7000, read_after_s=READ_AFTER_S)
    finally:
        stack.apply(replica_delay_ms=before)
    by = trial["by_reader"]
    seen = (f"writer's stale reads {trial['stale_reads']:.0%}; answered by the replica: other client "
            f"{by['other']:.0%}, writer right after its write {by['writer+0s']:.0%}, writer "
            f"{READ_AFTER_S[-1] * 1000:.0f} ms after it {by[f'writer+{READ_AFTER_S[-1]:g}s']:.0%} "
            f"(the servers' own word: pg_is_in_recovery())")
    if trial["stale_reads"] > 0:
        return Verdict(False, "no stale reads for the writer", f"{trial['stale_reads']:.0%} stale", seen + ".",
                       hint="The writer read its user from a replica that had not replayed the write yet: until "
                            "the replica's replay LSN reaches the write's LSN, read from the primary.")
    if by["other"] < 1:
        return Verdict(False, "other clients read the replica", f"{by['other']:.0%} on the replica", seen + ".",
                       hint="Only the client that wrote needs the primary; a client that never wrote reads the "
                            "replica (the point of having one).")
    if by[f"writer+{READ_AFTER_S[-1]:g}s"] < 1:
        return Verdict(False, "the writer back on the replica once it has caught up",
                       f"{by[f'writer+{READ_AFTER_S[-1]:g}s']:.0%} on the replica", seen + ".",
                       hint=f"{READ_AFTER_S[-1] * 1000:.0f} ms after the write the replica (300 ms behind) has "
                            "replayed it: compare LSNs on every read instead of staying on the primary for a "
                            "fixed time or for ever.")
    return Verdict(True, detail=seen + ": read-your-writes holds, and reads go back to the replica as soon as "
                                       "it has caught up.")


# -- 4. the app's own reads, consistent: a stack-state check --------------------------------

LAB_DELAY_MS = 200


def _replica_delay_ms(stack) -> float:
    """recovery_min_apply_delay as the replica reports it, in milliseconds."""
    from ... import clients
    with clients.connect(stack, "replica", user="postgres", dbname="postgres") as conn:
        value = conn.execute("SELECT setting::float8 FROM pg_settings "
                             "WHERE name = 'recovery_min_apply_delay'").fetchone()[0]
    return value


@check_definition("consistent_reads", LAB, "the app's PUT-then-GET consistent, reads still on the replica", hints=(
    "The app's router cannot be changed here, but PostgreSQL can make a commit wait until the replica has "
    "done something with it: which step must it wait for, so that a read right after sees the change?",
    "Look at postgres.synchronous_commit's values in lesson 4's section 5: one waits for the replica to "
    "receive the change, one for it to apply it. Keep app.read_from on the replica and the 200 ms delay.",
    "Worked example with another setting: to make commits survive the loss of the primary's disk you would "
    "wait for the replica to have the change in memory or on disk (remote_write); reads need more than that.",
), solution_state={"synchronous_commit": "remote_apply", "read_from": "replica", "replica_delay_ms": LAB_DELAY_MS})
@quiet.measurement      # timed against the live servers: the machine to itself in a parallel test run
def check_consistent_reads():
    from ...course.replication import summarise_pairs, write_read_pairs
    from ._live import learner_stack
    stack = learner_stack()
    delay = _replica_delay_ms(stack)
    if delay < LAB_DELAY_MS:
        return Verdict(False, f"the replica {LAB_DELAY_MS} ms behind", f"{delay:g} ms (the replica's own setting)",
                       f"The replica reports recovery_min_apply_delay = {delay:g} ms: the check is about a lagging "
                       f"replica.", hint=f"Put the delay back: stack.apply(replica_delay_ms={LAB_DELAY_MS}).")
    frame = write_read_pairs(stack, pairs=12, first_user=8000, poll_until_fresh_s=delay / 1000 + 2)
    s = summarise_pairs(frame)
    seen = (f"12 PUT-then-GET pairs through the app: {s['anomaly_rate']:.0%} of reads missed the write, "
            f"{s['read_on_replica']:.0%} answered by the replica (its own word), writes took "
            f"{s['write_ms_p50']:.0f} ms (p50)")
    seen += as_predicted("consistent_write_ms", " (you predicted {:.0f} ms)")
    if s["read_on_replica"] < 0.9:
        return Verdict(False, "reads answered by the replica", f"{s['read_on_replica']:.0%}", seen + ".",
                       hint="Reading everything from the primary is consistent, and gives up the replica: keep "
                            "app.read_from='replica' and make the commit wait instead.")
    if s["anomaly_rate"] > 0:
        return Verdict(False, "no read misses its write", f"{s['anomaly_rate']:.0%} stale", seen + ".",
                       hint="The commit returned before the replica had applied the change. remote_write waits "
                            "for it to arrive, not to be applied.")
    return Verdict(True, detail=seen + ": consistent, and every write paid the replica's delay.")
