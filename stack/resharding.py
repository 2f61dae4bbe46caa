"""Moving users between shard maps while the app keeps serving them (any backend).

    report = execute(stack, before, after, push)     # before/after: ShardMap or None

`push(read, write)` is the backend's part: it makes every app replica route reads by the map
`read` and send writes to every map in `write`, and returns once each replica reports it.
A move from map A to map B goes through three routings, each in force on every replica
before the next begins, so no read ever misses a row and none sees one twice:

1. copy:  reads by A; writes to the row's home under A, then under B.   The mover copies every
          row whose home differs under B (in batches; the newest `updated_at` wins on every copy,
          so a write that races the mover is never overwritten by an older version).
2. flip:  reads by B; writes still to both homes (a replica still on step 1 reads A's homes).
3. done:  reads and writes by B. Then the copies left on their old homes are deleted.

A row is always on its home under the map reads use; a copy elsewhere is never counted, because
every read (a lookup, a fan-out) keeps only the rows on their home under that map.
From no map (sharding off) the shards are loaded from the primary's users table; to no map, the
replicas read the primary again (its table as it was when sharding began: the lesson says so).
"""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from . import clients
from .files import run_parallel, write_atomic
from .shardmap import ShardMap

COLUMNS = "id, name, email, region, updated_at"
BATCH = 5000
UPSERT = (f"INSERT INTO users ({COLUMNS}) "
          "SELECT * FROM unnest(%s::int[], %s::text[], %s::text[], %s::text[], %s::timestamptz[]) "
          "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email, "
          "region = EXCLUDED.region, updated_at = EXCLUDED.updated_at "
          "WHERE users.updated_at <= EXCLUDED.updated_at")

Push = Callable[[ShardMap | None, list | None], None]


def _connect(target, shard: int):
    return clients.connect(target, f"shard-{shard}")


def _rows(target, server: str, where: str = "", params: tuple = ()) -> list[tuple]:
    with clients.connect(target, server) as conn:
        return conn.execute(f"SELECT {COLUMNS} FROM users {where}", params).fetchall()


def _upsert(conn, rows: list[tuple]) -> None:
    for start in range(0, len(rows), BATCH):
        part = rows[start:start + BATCH]
        conn.execute(UPSERT, [list(col) for col in zip(*part)])


def _copy_in(target, shard: int, rows: list[tuple]) -> None:
    with _connect(target, shard) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY users ({COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def _truncate(target, shards) -> None:
    def empty(shard: int) -> None:
        with _connect(target, shard) as conn:
            conn.execute("TRUNCATE users")
    run_parallel([lambda s=s: empty(s) for s in shards])


def ids_by_shard(target, count: int) -> dict[int, list[int]]:
    """{shard: sorted user ids it holds}, asked of each shard server."""
    result: dict[int, list[int]] = {}

    def ask(shard: int) -> None:
        with _connect(target, shard) as conn:
            result[shard] = [r[0] for r in conn.execute("SELECT id FROM users ORDER BY id").fetchall()]

    run_parallel([lambda s=s: ask(s) for s in range(1, count + 1)])
    return dict(sorted(result.items()))


def misplaced(target, shard_map: ShardMap) -> list[tuple[int, int, int]]:
    """(user id, shard it is on, its home under the map) for every row not on its home."""
    wrong = []
    for shard in shard_map.shards():
        for row in _rows(target, f"shard-{shard}"):
            home = shard_map.home(row[0], row[3])
            if home != shard:
                wrong.append((row[0], shard, home))
    return wrong


def load(target, to: ShardMap, push: Push) -> dict:
    """Sharding on: the shards get the primary's users, each row on its home; then replicas route there."""
    started = time.perf_counter()
    _truncate(target, to.shards())
    snapshot = _rows(target, "primary")
    by_home: dict[int, list] = defaultdict(list)
    for row in snapshot:
        by_home[to.home(row[0], row[3])].append(row)
    run_parallel([lambda s=s: _copy_in(target, s, by_home[s]) for s in to.shards()])
    copied = time.perf_counter()
    newest = max((r[4] for r in snapshot), default=None)
    top = max((r[0] for r in snapshot), default=0)
    push(to, None)
    # Writes the primary took while the rows were copied (before every replica switched): copy them too.
    late = _rows(target, "primary", "WHERE id > %s OR updated_at > %s", (top, newest)) if newest else []
    _place(target, to, late)
    return _report(None, to, len(snapshot), len(snapshot) + len(late), started, copied, errors=0)


def _place(target, shard_map: ShardMap, rows: list[tuple]) -> None:
    by_home: dict[int, list] = defaultdict(list)
    for row in rows:
        by_home[shard_map.home(row[0], row[3])].append(row)
    for shard, part in by_home.items():
        with _connect(target, shard) as conn:
            _upsert(conn, part)


def move(target, before: ShardMap, after: ShardMap, push: Push) -> dict:
    """Online: copy (reads by `before`, writes to both), flip, done, clean up. See the module doc."""
    started = time.perf_counter()
    _truncate(target, [s for s in after.shards() if s > before.count])    # new servers start empty
    push(before, [before, after])
    moved = {"rows": 0, "seen": 0}
    lock = threading.Lock()

    def copy_from(shard: int) -> None:
        seen = 0
        outgoing: dict[int, list] = defaultdict(list)
        rows = _rows(target, f"shard-{shard}")
        for row in rows:
            if before.home(row[0], row[3]) != shard:
                continue                       # a leftover copy, not this shard's user
            seen += 1
            home = after.home(row[0], row[3])
            if home != shard:
                outgoing[home].append(row)
        for home, part in outgoing.items():
            with _connect(target, home) as conn:
                _upsert(conn, part)
            with lock:
                moved["rows"] += len(part)
        with lock:
            moved["seen"] += seen

    copy_started = time.perf_counter()
    run_parallel([lambda s=s: copy_from(s) for s in before.shards()])
    copied = time.perf_counter()
    push(after, [after, before])
    push(after, None)
    deleted = _clean(target, after, max(before.count, after.count))
    report = _report(before, after, moved["seen"], moved["rows"], copy_started, copied, errors=0)
    report["deleted_copies"] = deleted
    report["duration_s"] = round(time.perf_counter() - started, 3)
    return report


def _clean(target, after: ShardMap, servers: int) -> int:
    """Delete every row not on its home under `after`; servers beyond its count are emptied."""
    deleted: dict[int, int] = {}

    def clean(shard: int) -> None:
        with _connect(target, shard) as conn:
            if shard > after.count:
                deleted[shard] = conn.execute("DELETE FROM users").rowcount
                return
            rows = conn.execute("SELECT id, region FROM users").fetchall()
            gone = [i for i, region in rows if after.home(i, region) != shard]
            deleted[shard] = conn.execute("DELETE FROM users WHERE id = ANY(%s)", (gone,)).rowcount if gone else 0

    run_parallel([lambda s=s: clean(s) for s in range(1, servers + 1)])
    return sum(deleted.values())


def _report(before, after, rows_total: int, rows_moved: int, started: float, copied: float, errors: int) -> dict:
    copy_s = max(copied - started, 1e-9)
    return {"from": before.to_dict() if before else None, "to": after.to_dict() if after else None,
            "rows_total": rows_total, "rows_moved": rows_moved, "copy_s": round(copy_s, 4),
            "rows_per_s": round(rows_moved / copy_s), "duration_s": round(time.perf_counter() - started, 3),
            "errors": errors}


def execute(target, before: ShardMap | None, after: ShardMap | None, push: Push) -> dict:
    """Whatever the change of map needs: load, move, or back to the primary."""
    if before is None and after is None:
        return {"from": None, "to": None, "rows_moved": 0, "duration_s": 0.0, "errors": 0}
    if before is None:
        return load(target, after, push)
    if after is None:
        started = time.perf_counter()
        push(None, None)
        return {"from": before.to_dict(), "to": None, "rows_total": 0, "rows_moved": 0,
                "duration_s": round(time.perf_counter() - started, 3), "errors": 0}
    return move(target, before, after, push)


# -- what a backend keeps of the last move (status()["resharding"]) -----------------------------------
LAST_REPORT = "resharding-last.json"


def save_report(state_dir: Path, report: dict) -> None:
    write_atomic(Path(state_dir) / LAST_REPORT, json.dumps(report))


def last_report(state_dir: Path) -> dict | None:
    path = Path(state_dir) / LAST_REPORT
    return json.loads(path.read_text()) if path.exists() else None


def figures(report: dict) -> str:
    """': 812 of 10000 rows moved in 0.41 s (5,000 rows/s copying)' ('' when nothing was moved to)."""
    if not report.get("to"):
        return ""
    rate = f" ({report['rows_per_s']:,} rows/s copying)" if report.get("rows_per_s") else ""
    return (f": {report['rows_moved']} of {report.get('rows_total', 0)} rows moved in "
            f"{report['duration_s']:.2f} s" + rate)
