"""Where Swarm's published ports listen: the binding address of the engine's docker_gwbridge.

A host-mode published port has no host address in Swarm: the engine binds it at the binding
address of its `docker_gwbridge`, 0.0.0.0 unless that bridge was made with another one before
`docker swarm init`. `loopback_bridge(client)` makes the bridge with 127.0.0.1 (or makes it again,
keeping its subnet and options, when it exists unused), so every port a swarm then publishes on
this node listens on loopback only. SwarmStack.up() calls it when it makes the swarm;
`python -m stack.swarm gateway-bridge` does it for a swarm made by hand (the stack file's header,
the Docker tier's multi-node swarm). With the docker CLI, before `docker swarm init`:

    docker network create --opt com.docker.network.bridge.name=docker_gwbridge \
        --opt com.docker.network.bridge.enable_icc=false \
        --opt com.docker.network.bridge.enable_ip_masquerade=true \
        --opt com.docker.network.bridge.host_binding_ipv4=127.0.0.1 docker_gwbridge
"""
from __future__ import annotations

from ..ports import HOST

NAME = "docker_gwbridge"
BINDING_OPTION = "com.docker.network.bridge.host_binding_ipv4"
# What the engine gives docker_gwbridge itself (Docker's docs, "Customize the docker_gwbridge interface").
ENGINE_OPTIONS = {"com.docker.network.bridge.name": NAME,
                  "com.docker.network.bridge.enable_icc": "false",
                  "com.docker.network.bridge.enable_ip_masquerade": "true"}


def loopback_bridge(client, host: str = HOST) -> str:
    """Make docker_gwbridge bind published ports on `host`; returns what happened (one line).

    Never raises for the bridge: an engine that refuses (the bridge in use, no address pool left)
    keeps its own, and the line says where the ports will listen."""
    from docker.errors import APIError, NotFound
    try:
        bridge = client.networks.get(NAME)
    except NotFound:
        bridge = None
    except APIError as exc:
        return (f"could not read {NAME} ({exc.explanation or exc}): published ports listen at its "
                f"binding address, 0.0.0.0 unless it was made otherwise")
    options, ipam = dict(ENGINE_OPTIONS), None
    if bridge is not None:
        current = bridge.attrs.get("Options") or {}
        if current.get(BINDING_OPTION) == host:
            return f"{NAME} binds published ports on {host}"
        if bridge.attrs.get("Containers"):
            return (f"{NAME} is in use, so it stays as it is: published ports listen at its binding address "
                    f"({current.get(BINDING_OPTION, '0.0.0.0')})")
        options, ipam = current, _same_ipam(bridge.attrs.get("IPAM") or {})
    try:
        if bridge is not None:
            bridge.remove()
        client.networks.create(NAME, driver="bridge", options={**options, BINDING_OPTION: host}, ipam=ipam)
    except APIError as exc:
        return (f"could not {'remake' if bridge else 'make'} {NAME} ({exc.explanation or exc}): published ports "
                f"listen at the binding address of the one the engine makes, 0.0.0.0")
    kept = " (its subnet and options kept)" if bridge is not None else ""
    return (f"{'remade' if bridge else 'made'} {NAME} with {host} as binding address{kept}: "
            f"published ports listen on loopback only")


def _same_ipam(ipam: dict):
    from docker.types import IPAMConfig, IPAMPool
    pools = [IPAMPool(subnet=c["Subnet"], gateway=c.get("Gateway"), iprange=c.get("IPRange"))
             for c in ipam.get("Config") or [] if c.get("Subnet")]
    return IPAMConfig(driver=ipam.get("Driver") or "default", pool_configs=pools) if pools else None


def listening_note(bindings: set[tuple[str, int]], host: str = HOST) -> str | None:
    """What status() says when published ports (address, port) listen wider than `host`; None if not."""
    wider = sorted({ip for ip, _ in bindings} - {host})
    if not wider:
        return None
    return (f"published ports listen on {', '.join(wider)}, not {host} only: this engine's {NAME} binds them "
            f"there (see stack/swarm/gateway.py)")
