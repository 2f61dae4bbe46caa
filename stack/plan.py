"""Which change needs which action: every rule once, for every backend.

    plan(old, new, running) -> [Action, ...]

`old` is the topology the stack was last brought to (None: nothing applied yet),
`new` the one wanted, `running` the services that run now, by name ("app-3",
"postgres-replica" ...). The result is the least work, in the order it must be
done. No I/O: backends execute actions (stack.local, stack.docker, stack.swarm)
and tests replay scripted histories (tests/test_plan.py).

Every Topology field has a rule in FIELD_RULES; a field added without one makes
`plan` raise (and tests/test_plan.py fail) instead of being silently ignored.
An action that changes a setting carries the values the server must report
(`expect`) before the backend may call it done.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .app.config import replica_lag_bound_s
from .errors import StackError
from .topology import SECTIONS, Topology

# -- the services a topology runs -------------------------------------------------------------
INFRA = ("postgres-primary", "postgres-replica", "redis", "pgbouncer", "nginx")
# Front to back: stop taking requests first, the databases last.
STOP_ORDER = (("nginx",), ("app",), ("pgbouncer", "redis"), ("postgres-replica", "postgres-shard"),
              ("postgres-primary",))


def app_name(index: int) -> str:
    return f"app-{index}"


def shard_service(index: int) -> str:
    return f"postgres-shard-{index}"


def shard_services(topology: Topology) -> list[str]:
    return [shard_service(i) for i in range(1, topology.postgres.shards + 1)]


def services_for(topology: Topology) -> list[str]:
    """The services a topology runs, in start order (nginx last: it resolves the replicas)."""
    names = ["postgres-primary", "postgres-replica", *shard_services(topology), "redis"]
    if topology.pgbouncer.enabled:
        names.append("pgbouncer")
    names += [app_name(i) for i in range(1, topology.app.replicas + 1)]
    return names + ["nginx"]


def stop_rank(service: str) -> int:
    key = "app" if service.startswith("app-") else service
    if service.startswith("postgres-shard-"):
        key = "postgres-shard"
    for rank, stage in enumerate(STOP_ORDER):
        if key in stage:
            return rank
    raise StackError(f"service={service!r} is not allowed: one of {', '.join(INFRA)} or app-N")


def stop_stages(services) -> list[list[str]]:
    """`services` grouped by STOP_ORDER stage, front to back, each in the order given: a backend
    stops one stage at once (four shard servers together), then the next."""
    services = list(services)
    return [[s for s in services if stop_rank(s) == rank] for rank in sorted({stop_rank(s) for s in services})]


# -- actions ----------------------------------------------------------------------------------
START = "start"                      # services: start (and wait until each answers)
STOP = "stop"                        # services: stop, in STOP_ORDER
RESTART_POSTGRES = "restart_postgres"  # services: in this order; replay: wait for the standby to replay first
RELOAD_POSTGRES = "reload_postgres"  # services; expect: {server: {setting: value}} as pg_settings shows it
SET_REDIS = "set_redis"              # expect: CONFIG GET values
RELOAD_PGBOUNCER = "reload_pgbouncer"  # expect: SHOW CONFIG values
PUSH_APP_CONFIG = "push_app_config"  # services; expect: what /_admin/config answers
SET_CPU_QUOTA = "set_cpu_quota"      # services; expect: {"cpus": float | None}
RELOAD_NGINX = "reload_nginx"        # drain_s: wait for old workers (a replica leaves)
# Move users between shard maps (stack.resharding): expect {"from": map | None, "to": map | None}.
# From None: load the shards from the primary's users table; to None: reads go back to the primary.
RESHARD = "reshard"
KINDS = (START, STOP, RESTART_POSTGRES, RELOAD_POSTGRES, SET_REDIS, RELOAD_PGBOUNCER,
         PUSH_APP_CONFIG, SET_CPU_QUOTA, RELOAD_NGINX, RESHARD)


@dataclass(frozen=True)
class Action:
    kind: str
    services: tuple[str, ...] = ()
    expect: dict = field(default_factory=dict, compare=True, hash=False)
    drain_s: float = 0
    replay: bool = False             # RESTART_POSTGRES shrinking: the standby replays the primary's change first
    why: tuple[str, ...] = ()        # the fields that asked for it

    def __str__(self) -> str:
        parts = [self.kind]
        if self.services:
            parts.append(",".join(self.services))
        if self.why:
            parts.append("(" + ", ".join(self.why) + ")")
        return " ".join(parts)


# -- one rule per field -------------------------------------------------------------------------
# What a change of each field needs on a running stack. "scale" and "pgbouncer" are
# start/stop decisions made from the service lists; every other rule is a live action.
FIELD_RULES: dict[str, tuple[str, ...]] = {
    "app.replicas": ("scale", RELOAD_NGINX),
    "app.concurrency": (PUSH_APP_CONFIG,),
    "app.cpu_quota": (SET_CPU_QUOTA,),
    "app.write_pool": (PUSH_APP_CONFIG,),
    "app.read_pool": (PUSH_APP_CONFIG,),
    "app.pool_timeout_s": (PUSH_APP_CONFIG,),
    "app.pool_idle_s": (PUSH_APP_CONFIG,),
    "app.read_from": (PUSH_APP_CONFIG,),
    "balancer.strategy": (RELOAD_NGINX,),
    "balancer.weights": (RELOAD_NGINX,),
    "balancer.keepalive": (RELOAD_NGINX,),
    "balancer.max_fails": (RELOAD_NGINX,),
    "balancer.fail_timeout_s": (RELOAD_NGINX,),
    "balancer.next_upstream": (RELOAD_NGINX,),
    # The replicas stop reading from a replica that lags more than the delay + 2 s.
    "postgres.replica_delay_ms": (RELOAD_POSTGRES, PUSH_APP_CONFIG),
    "postgres.synchronous_commit": (RELOAD_POSTGRES,),
    "postgres.max_connections": (RESTART_POSTGRES,),
    # Shard servers start/stop from the service lists; the users move online, then the replicas
    # route by the new map (stack.resharding pushes each phase of the move to them).
    "postgres.shards": ("shards", RESHARD, PUSH_APP_CONFIG),
    "postgres.shard_scheme": (RESHARD, PUSH_APP_CONFIG),
    # Writes go through PgBouncer or straight to the primary: the replicas must know.
    "pgbouncer.enabled": ("pgbouncer", PUSH_APP_CONFIG),
    "pgbouncer.mode": (RELOAD_PGBOUNCER,),
    "pgbouncer.pool_size": (RELOAD_PGBOUNCER,),
    "pgbouncer.max_client_conn": (RELOAD_PGBOUNCER,),
    "cache.ttl_s": (PUSH_APP_CONFIG,),
    "cache.maxmemory_mb": (SET_REDIS,),
    "cache.policy": (SET_REDIS,),
    "base_port": ("refuse",),        # every address moves: down() first (the backends say so)
}


def topology_fields() -> list[str]:
    """Every leaf field of a Topology, dotted: 'app.replicas', ..., 'base_port'."""
    names = [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls)]
    return names + [f.name for f in fields(Topology) if f.name not in SECTIONS]


def changed_fields(old: Topology, new: Topology) -> list[str]:
    changed = []
    for name in topology_fields():
        if "." in name:
            section, leaf = name.split(".")
            if getattr(getattr(old, section), leaf) != getattr(getattr(new, section), leaf):
                changed.append(name)
        elif getattr(old, name) != getattr(new, name):
            changed.append(name)
    missing = [name for name in changed if name not in FIELD_RULES]
    if missing:
        raise StackError(f"topology field {missing[0]!r} has no rule in stack.plan.FIELD_RULES: "
                         f"add one (which action applies a change of it)")
    return changed


# -- what the servers must report -------------------------------------------------------------
def postgres_expect(topology: Topology) -> dict:
    """pg_settings values (`setting` column, its own units) each server reports once in force."""
    spec = topology.postgres
    return {"postgres-primary": {"synchronous_commit": spec.synchronous_commit,
                                 "max_connections": str(spec.max_connections)},
            "postgres-replica": {"recovery_min_apply_delay": str(spec.replica_delay_ms),
                                 "max_connections": str(spec.max_connections)}}


def redis_expect(topology: Topology) -> dict:
    return {"maxmemory": str(topology.cache.maxmemory_mb * 1024 * 1024), "maxmemory-policy": topology.cache.policy}


def pgbouncer_expect(topology: Topology) -> dict:
    spec = topology.pgbouncer
    return {"pool_mode": spec.mode, "default_pool_size": str(spec.pool_size),
            "max_client_conn": str(spec.max_client_conn)}


def app_config_expect(topology: Topology) -> dict:
    """What a replica's /_admin/config answers once it runs with this topology's config."""
    app = topology.app
    return {"ttl_s": topology.cache.ttl_s, "write_pool": app.write_pool, "read_pool": app.read_pool,
            "pool_timeout_s": app.pool_timeout_s, "pool_idle_s": app.pool_idle_s,
            "concurrency": app.concurrency, "read_from": app.read_from,
            "via_pgbouncer": topology.pgbouncer.enabled, "replica_lag_bound_s": replica_lag_bound_s(topology),
            "shards": shard_routing(topology.postgres.shard_map())}


def shard_routing(read, write=None) -> dict | None:
    """What a replica reports of its shard routing: the map reads use and the maps writes go to
    (two while users move: stack.resharding). None: users live on the primary."""
    if read is None:
        return None
    return {"read": read.to_dict(), "write": [m.to_dict() for m in (write or [read])]}


def reshard_action(old: Topology | None, new: Topology) -> Action | None:
    """Users must move when the shard map changes; a first start with shards loads them."""
    before = old.postgres.shard_map() if old is not None else None
    after = new.postgres.shard_map()
    if before == after and not (old is None and after is not None):
        return None
    why = [] if old is None else [f for f in ("postgres.shards", "postgres.shard_scheme")
                                  if getattr(old.postgres, f.split(".")[1]) != getattr(new.postgres, f.split(".")[1])]
    return Action(RESHARD, tuple(shard_services(new)),
                  expect={"from": before.to_dict() if before else None, "to": after.to_dict() if after else None},
                  why=tuple(why or ["postgres.shards"]))


# -- the plan -------------------------------------------------------------------------------------
def plan(old: Topology | None, new: Topology, running) -> list[Action]:
    """The actions that bring a stack running `running` (last brought to `old`) to `new`."""
    running = set(running)
    wanted = services_for(new)
    start = tuple(s for s in wanted if s not in running)
    stop = tuple(sorted((s for s in running if s not in wanted), key=lambda s: (stop_rank(s), s)))
    kept = [s for s in wanted if s in running]
    kept_apps = tuple(s for s in kept if s.startswith("app-"))
    actions: list[Action] = []
    if start:
        actions.append(Action(START, start))
    if old is None and new.postgres.shards:
        actions.append(reshard_action(None, new))     # load the shards (when they are empty)
    if old is not None:
        changed = changed_fields(old, new)
        if "base_port" in changed and running:
            raise StackError(f"base_port={new.base_port} differs from the running stack's "
                             f"{old.base_port}: run down() first, then up() on the new port")
        rules: dict[str, list[str]] = {}
        for name in changed:
            for rule in FIELD_RULES[name]:
                rules.setdefault(rule, []).append(name)
        move = reshard_action(old, new) if RESHARD in rules else None
        if move is not None:
            actions.append(move)
        actions += _live_changes(old, new, rules, kept, kept_apps)
    # The balancer follows every change of the replica set, then the replicas that left it.
    stopped_apps = [s for s in stop if s.startswith("app-")]
    started_apps = [s for s in start if s.startswith("app-")]
    if "nginx" in running and "nginx" in wanted:
        why = [] if old is None else [f for f in changed_fields(old, new) if RELOAD_NGINX in FIELD_RULES[f]]
        if why or started_apps or stopped_apps:
            actions.append(Action(RELOAD_NGINX, drain_s=10 if stopped_apps else 0,
                                  why=tuple(why or ["app.replicas"])))
    if stop:
        actions.append(Action(STOP, stop))
    return actions


def _live_changes(old: Topology, new: Topology, rules: dict, kept: list, kept_apps: tuple) -> list[Action]:
    actions = []
    pg = tuple(s for s in ("postgres-primary", "postgres-replica") if s in kept)
    if RESTART_POSTGRES in rules and pg:
        growing = new.postgres.max_connections > old.postgres.max_connections
        # A standby refuses a max_connections below its primary's: growing restarts it first;
        # shrinking restarts the primary first and lets the standby replay the change.
        order = ("postgres-replica", "postgres-primary") if growing else ("postgres-primary", "postgres-replica")
        actions.append(Action(RESTART_POSTGRES, tuple(s for s in order if s in pg),
                              expect=postgres_expect(new), replay=not growing,
                              why=tuple(rules[RESTART_POSTGRES])))
    if RELOAD_POSTGRES in rules and pg:
        expect = postgres_expect(new)
        actions.append(Action(RELOAD_POSTGRES, pg, expect={s: expect[s] for s in pg},
                              why=tuple(rules[RELOAD_POSTGRES])))
    if SET_REDIS in rules and "redis" in kept:
        actions.append(Action(SET_REDIS, ("redis",), expect=redis_expect(new), why=tuple(rules[SET_REDIS])))
    if RELOAD_PGBOUNCER in rules and "pgbouncer" in kept:
        actions.append(Action(RELOAD_PGBOUNCER, ("pgbouncer",), expect=pgbouncer_expect(new),
                              why=tuple(rules[RELOAD_PGBOUNCER])))
    if PUSH_APP_CONFIG in rules and kept_apps:
        actions.append(Action(PUSH_APP_CONFIG, kept_apps, expect=app_config_expect(new),
                              why=tuple(rules[PUSH_APP_CONFIG])))
    if SET_CPU_QUOTA in rules and kept_apps:
        actions.append(Action(SET_CPU_QUOTA, kept_apps, expect={"cpus": new.app.cpu_quota},
                              why=tuple(rules[SET_CPU_QUOTA])))
    return actions


def restore_plan(attempted: Topology, old: Topology, running, ran_before) -> list[Action]:
    """After a failed change to `attempted`: the actions that bring the stack back to `old`.

    Only what ran before the change is started again; a service that had died before it
    stays for the next up() to heal, as it would have.
    """
    ran_before = set(ran_before)
    restored = []
    for action in plan(attempted, old, running):
        if action.kind == START:
            services = tuple(s for s in action.services if s in ran_before)
            if not services:
                continue
            action = Action(START, services)
        restored.append(action)
    return restored


def describe(action: Action, topology: Topology) -> str:
    """The line a backend reports when it has done `action` (the same words on every backend)."""
    kind = action.kind
    if kind == RESTART_POSTGRES:
        return "restarted postgres (max_connections needs a restart)"
    if kind == RELOAD_POSTGRES:
        return "reloaded postgres settings (synchronous_commit, replica apply delay)"
    if kind == SET_REDIS:
        return "changed redis maxmemory/policy live"
    if kind == RELOAD_PGBOUNCER:
        return "reloaded pgbouncer"
    if kind == PUSH_APP_CONFIG:
        return "pushed app config (ttl, pools, concurrency, read target) to running replicas"
    if kind == SET_CPU_QUOTA:
        return f"set each replica's CPU quota to {topology.app.cpu_quota or 'unlimited'}"
    if kind == RESHARD:
        before, after = action.expect.get("from"), action.expect.get("to")
        if before is None:
            return f"loaded users into {after['count']} shard(s) ({after['scheme']})"
        if after is None:
            return "users back on the primary (sharding off)"
        return (f"resharded users online: {before['scheme']} over {before['count']} -> "
                f"{after['scheme']} over {after['count']}")
    if kind == RELOAD_NGINX:
        return f"reloaded nginx: {topology.balancer.strategy} over {topology.app.replicas} replicas"
    return str(action)
