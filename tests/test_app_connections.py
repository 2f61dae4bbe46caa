"""The replicas count the TCP connections their traffic came on (lesson 3's keepalive experiment)."""
from stack.app.connections import ConnectionCounter


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_requests_on_one_connection_count_once_and_new_connections_each_count():
    counter = ConnectionCounter(clock=Clock())
    for _ in range(100):
        counter.saw(7)            # keepalive: one connection, many requests
    assert counter.opened == 1
    for number in range(8, 108):
        counter.saw(number)       # no keepalive: one connection per request
    assert counter.opened == 101


def test_unknown_connections_are_not_counted_and_idle_ones_are_forgotten():
    clock = Clock()
    counter = ConnectionCounter(idle_s=75, clock=clock)
    counter.saw(None)
    assert counter.opened == 0
    counter.saw(1)
    counter.saw(2)
    clock.now = 50
    counter.saw(2)
    clock.now = 100               # 1 idle 100 s: forgotten; 2 idle 50 s: kept
    counter.saw(3)
    assert counter.recent == 2 and counter.opened == 3
