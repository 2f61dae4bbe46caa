"""Pure parts of lesson 4's code: DSNs, LSNs, rates, summaries and the window router."""
from __future__ import annotations

import pandas as pd
import pytest

from stack import clients
from stack.errors import StackError
from stack.ports import Ports
from stack.course import replication as rp
from stack.lab.checks.lab04 import reference_read_target, reference_route


def test_lsn_to_int_puts_the_high_part_above_the_low_32_bits():
    assert clients.lsn_to_int("0/0") == 0
    assert clients.lsn_to_int("0/10") == 16
    assert clients.lsn_to_int("1/0") == 2**32
    assert clients.lsn_to_int("16/B374D848") == 0x16 * 2**32 + 0xB374D848


def test_dsn_names_the_user_and_refuses_others():
    class Context:
        ports = Ports(20000)
        secrets = {"app_password": "s3cret", "postgres_password": "x"}
    text = clients.dsn(Context(), "primary", user="app")
    assert "user=app" in text and "port=20002" in text and "dbname=scalelab" in text
    with pytest.raises(StackError, match="user='root'"):
        clients.dsn(Context(), "primary", user="root")


def test_address_refuses_an_unknown_server_and_a_stopped_one():
    class Fake:
        def status(self):
            return {"services": {"postgres-replica": {"state": "exited", "address": None}}}
    with pytest.raises(ValueError, match="one of"):
        clients.address(Fake(), "mysql")
    with pytest.raises(RuntimeError, match="stack.up"):
        clients.address(Fake(), "replica")


def test_rates_are_per_second_differences():
    before = {"primary": {"t": 10.0, "xact_commit": 100, "tup_fetched": 0}}
    after = {"primary": {"t": 12.0, "xact_commit": 300, "tup_fetched": 50}}
    assert rp.rates(before, after) == {"primary": {"tps": 100.0, "rows_per_s": 25.0}}


def test_served_by_reads_the_database_field():
    assert rp.served_by({"db": {"standby": True, "port": 1}}) == "replica"
    assert rp.served_by({"db": {"standby": False, "port": 1}}) == "primary"
    assert rp.served_by({"source": "cache"}) is None
    assert rp.served_by(None) is None


def test_summarise_pairs():
    frame = pd.DataFrame([
        {"write_ok": True, "write_ms": 10.0, "stale": True, "server": "replica", "stale_ms": 300.0},
        {"write_ok": True, "write_ms": 20.0, "stale": False, "server": "replica", "stale_ms": None},
        {"write_ok": True, "write_ms": 30.0, "stale": True, "server": "primary", "stale_ms": 100.0},
        {"write_ok": True, "write_ms": 40.0, "stale": False, "server": "replica", "stale_ms": None}])
    s = rp.summarise_pairs(frame)
    assert s == {"pairs": 4, "anomaly_rate": 0.5, "stale_ms_median": 200.0, "write_ms_p50": 25.0,
                 "read_on_replica": 0.75}


class _Conn:
    def __init__(self, name):
        self.name, self.queries = name, []

    def execute(self, query, params=()):
        self.queries.append(query)
        return self

    def fetchone(self):
        return (self.name,)


def test_window_router_sends_only_the_writer_to_the_primary_and_only_for_the_window(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(rp.time, "monotonic", lambda: now[0])
    primary, replica = _Conn("primary"), _Conn("replica")
    router = rp.WindowRouter(primary, replica, window_s=0.5)
    assert router.read("ann", "SELECT") == ("replica",)
    router.write("ann", "UPDATE")
    assert router.read("ann", "SELECT") == ("primary",)
    assert router.read("bob", "SELECT") == ("replica",)
    now[0] += 0.6
    assert router.read("ann", "SELECT") == ("replica",)


@pytest.mark.parametrize("statement,where", [
    ("SELECT 1", "replica"), ("  select * from users", "replica"), ("UPDATE users SET name = 'x'", "primary"),
    ("SELECT * FROM users FOR UPDATE", "primary"), ("", "primary")])
def test_reference_route(statement, where):
    assert reference_route(statement) == where


def test_reference_read_target_compares_positions_not_text():
    assert reference_read_target(None, "0/0") == "replica"
    assert reference_read_target("0/9000000", "0/10000000") == "replica"
    assert reference_read_target("1/0", "0/FFFFFFFF") == "primary"
