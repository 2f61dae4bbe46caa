"""New PostgreSQL servers are copies of a per-machine template (stack/local/pg_template.py) taken
from spares made in the background (stack/local/cache.py). Real servers, a cache of its own."""
from __future__ import annotations

import os
import shutil
import time

import psycopg
import pytest

from conftest import reachable_tmp_dir, running_stack, shifted_port
from stack import clients
from stack.local import cache, postgres
from stack.local.proc import RunAs

pytestmark = pytest.mark.stack

BASE = shifted_port(20600)
OTHER = shifted_port(20700)


@pytest.fixture(scope="module")
def own_cache():
    """An empty cache for this module: the first `up` below makes the template."""
    root = reachable_tmp_dir("scalelab-cache-test-")
    before = os.environ.get("SCALELAB_CACHE")
    os.environ["SCALELAB_CACHE"] = str(root / "cache")
    yield root / "cache"
    if before is None:
        del os.environ["SCALELAB_CACHE"]
    else:
        os.environ["SCALELAB_CACHE"] = before
    shutil.rmtree(root, ignore_errors=True)


def system_identifier(ctx, server: str) -> int:
    with clients.connect(ctx, server, dbname="postgres") as conn:
        return conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]


def wait_for_spares(source, count: int, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = sorted((source.parent / f"{source.name}.spares").glob("ready-*"))
        if len(ready) >= count:
            return ready
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} spares of {source} after {timeout} s")


def test_two_stacks_share_one_template_but_not_its_passwords(own_cache):
    root_a, root_b = reachable_tmp_dir("scalelab-tpl-a-"), reachable_tmp_dir("scalelab-tpl-b-")
    try:
        with running_stack(root_a / "state", BASE, replicas=1) as a, \
                running_stack(root_b / "state", OTHER, replicas=1) as b:
            templates = list(own_cache.glob("pg-primary-*/data"))
            assert len(templates) == 1, templates
            ca, cb = a.context(), b.context()
            # Both primaries and both standbys are copies of the one template...
            ids = {system_identifier(c, s) for c in (ca, cb) for s in ("postgres-primary", "postgres-replica")}
            assert len(ids) == 1, ids
            # ...each with its own stack's passwords: the other stack's are refused.
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(host="127.0.0.1", port=ca.ports.primary, user="app", dbname="scalelab",
                                password=cb.secrets["app_password"], connect_timeout=5).close()
            with clients.connect(ca, "postgres-primary") as conn:
                assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == postgres.SEED_USERS
            # The standby copied from the template streams what the primary writes after it.
            with clients.connect(ca, "postgres-primary") as conn:
                conn.execute("UPDATE users SET name = 'from-the-primary' WHERE id = 7")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with clients.connect(ca, "postgres-replica") as conn:
                    if conn.execute("SELECT name FROM users WHERE id = 7").fetchone()[0] == "from-the-primary":
                        break
                time.sleep(0.05)
            else:
                raise AssertionError("the standby never showed the primary's write")
    finally:
        shutil.rmtree(root_a, ignore_errors=True)
        shutil.rmtree(root_b, ignore_errors=True)


def test_a_cold_up_takes_spares_and_the_cache_makes_them_again(own_cache):
    template = next(own_cache.glob("pg-primary-*/data"))
    before = wait_for_spares(template, 2)
    root = reachable_tmp_dir("scalelab-tpl-c-")
    try:
        with running_stack(root / "state", BASE, replicas=1):
            taken = [s for s in before if not s.exists()]
            assert len(taken) == 2, f"the primary and the standby each take a spare: {before} -> {taken}"
        after = wait_for_spares(template, 2)
        assert not set(after) & set(taken), "spares are new copies, not the ones taken"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_crashed_build_leaves_nothing_that_looks_ready(own_cache):
    run_as = RunAs()

    def crash(staging):
        (staging / "half-made").write_text("x")
        raise RuntimeError("initdb died")

    with pytest.raises(RuntimeError, match="initdb died"):
        cache.entry(run_as, "crash-test", "k1", crash)
    assert not (own_cache / "crash-test-k1").exists()
    made = cache.entry(run_as, "crash-test", "k1", lambda staging: (staging / "whole").write_text("y"))
    assert (made / "whole").read_text() == "y" and not list(own_cache.glob(".crash-test-k1.staging*"))
    # Made once: a second ask does not build again.
    assert cache.entry(run_as, "crash-test", "k1", crash) == made


def test_a_cache_someone_else_planted_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = reachable_tmp_dir("scalelab-cache-link-") / "cache"
    os.symlink(target, link)
    before = os.environ.get("SCALELAB_CACHE")
    os.environ["SCALELAB_CACHE"] = str(link)
    try:
        with pytest.raises(Exception, match="symlink"):
            cache.cache_root(RunAs())
    finally:
        if before is None:
            del os.environ["SCALELAB_CACHE"]
        else:
            os.environ["SCALELAB_CACHE"] = before
        shutil.rmtree(link.parent, ignore_errors=True)


def test_a_lost_standby_is_rebuilt_from_the_running_primary_not_the_template(own_cache):
    """The template is a valid base only for a primary that is itself a fresh copy: a standby made
    again later must be a base backup of the primary as it is now (with everything written since)."""
    root = reachable_tmp_dir("scalelab-tpl-d-")
    try:
        with running_stack(root / "state", BASE, replicas=1) as s:
            ctx = s.context()
            with clients.connect(ctx, "postgres-primary") as conn:
                conn.execute("UPDATE users SET name = 'written-before-the-loss' WHERE id = 11")
            s.down()
            shutil.rmtree(postgres.data_dir(ctx, "replica"))
            s.up()
            # pg_basebackup leaves a backup_label, which recovery renames; a template copy has none.
            assert (postgres.data_dir(ctx, "replica") / "backup_label.old").exists()
            with clients.connect(ctx, "postgres-replica") as conn:
                assert conn.execute("SELECT name FROM users WHERE id = 11").fetchone()[0] == "written-before-the-loss"
            deadline = time.monotonic() + 10
            while not postgres._streaming(ctx):
                assert time.monotonic() < deadline, "the rebuilt standby does not stream"
                time.sleep(0.1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
