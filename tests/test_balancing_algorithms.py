"""The reference pickers lab 3 checks against: nginx's algorithms, written out in Python.

The live checks (tests/test_labs.py) prove they agree with the real nginx; these pin
their properties without a stack."""
from collections import Counter

import pytest

from stack.lab.checks.lab03 import (reference_ip_hash, reference_least_connections, reference_round_robin,
                                    reference_smooth_weighted)


def test_round_robin_cycles_from_replica_1():
    assert reference_round_robin(3, 7) == [1, 2, 3, 1, 2, 3, 1]
    assert reference_round_robin(2, 0) == []


@pytest.mark.parametrize("weights", [(3, 1, 1), (5, 1, 1), (1, 2, 3), (4, 2, 1, 1), (1,), (7, 7)])
def test_smooth_weighted_gives_each_replica_its_weight_per_cycle(weights):
    total = sum(weights)
    picks = reference_smooth_weighted(list(weights), 3 * total)
    for cycle in range(3):
        counts = Counter(picks[cycle * total:(cycle + 1) * total])
        assert [counts[i] for i in range(1, len(weights) + 1)] == list(weights)


def test_smooth_weighted_interleaves_instead_of_bursting():
    assert reference_smooth_weighted([5, 1, 1], 7) == [1, 1, 2, 1, 3, 1, 1]   # nginx's documented example
    picks = reference_smooth_weighted([3, 1, 1], 5)
    assert picks == [1, 2, 1, 3, 1]
    # a weight of 5 out of 7 never gets its 5 picks in a row, as a blocky split would
    longest = max(len(run) for run in "".join(map(str, reference_smooth_weighted([5, 1, 1], 70))).replace("2", " ")
                  .replace("3", " ").split())
    assert longest == 4     # 1,1 at a cycle's end meets 1,1 at the next one's start: never all 5


def test_least_connections_divides_by_weight_and_prefers_the_first_on_a_tie():
    assert reference_least_connections([3, 1, 2]) == 2
    assert reference_least_connections([0, 0, 0]) == 1
    assert reference_least_connections([5, 2, 2], [3, 1, 1]) == 1      # 5/3 < 2/1
    assert reference_least_connections([3, 1, 1], [3, 1, 1]) == 1      # tie at 1.0: the first
    assert reference_least_connections([7, 2, 2], [3, 1, 1]) == 2      # 7/3 > 2


def test_ip_hash_uses_the_first_three_octets_and_walks_the_weights():
    assert reference_ip_hash("127.0.10.1", [1, 1, 1, 1]) == reference_ip_hash("127.0.10.200", [1, 1, 1, 1])
    # consecutive /24 networks land on consecutive replicas (the last octet hashed moves by one)
    assert [reference_ip_hash(f"127.0.{n}.1", [1, 1, 1, 1]) for n in range(1, 9)] == [2, 3, 4, 1, 2, 3, 4, 1]
    # the lesson's three clients: two of them share a replica
    assert [reference_ip_hash(a, [1, 1, 1, 1]) for a in ("127.0.10.1", "127.0.20.1", "127.0.30.1")] == [3, 1, 3]
    # a weight of 3 takes three slots of the modulo
    hits = Counter(reference_ip_hash(f"10.{a}.{b}.1", [3, 1]) for a in range(20) for b in range(50))
    assert 0.65 < hits[1] / sum(hits.values()) < 0.85


def test_ip_hash_moves_most_clients_when_a_replica_joins():
    clients = [f"127.0.{n}.1" for n in range(1, 41)]
    moved = sum(reference_ip_hash(c, [1] * 4) != reference_ip_hash(c, [1] * 5) for c in clients)
    assert moved == 32      # what lesson 3 measures on the live nginx
