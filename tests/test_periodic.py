"""The one background ticker (`mqvq.periodic.Periodic`) that the lease heartbeat, the search trial's
heartbeat and the system-metric sampler share: it keeps ticking through a failing tick, ends when a
tick says so, and stops with its body. Waits are on events and counts, not on the clock."""

import threading

from mqvq.periodic import Periodic


def test_a_tick_that_raises_is_skipped_and_the_ticker_goes_on():
    calls, third = [], threading.Event()

    def tick():
        calls.append(1)
        if len(calls) == 3:
            third.set()
        if len(calls) == 1:
            raise RuntimeError("a missed beat")

    with Periodic(tick, 0.001) as p:
        assert third.wait(30)
    assert len(calls) >= 3 and p.ticks == len(calls) - 1  # the failed one is not counted


def test_a_tick_that_returns_false_ends_the_thread_and_the_setup_runs_first_in_it():
    order = []

    def tick():
        order.append(("tick", threading.current_thread().name))
        return False

    p = Periodic(tick, 0.001, name="t", setup=lambda: order.append(("setup", threading.current_thread().name)))
    p.start()
    p._thread.join(30)  # ends by itself after the first tick
    assert order == [("setup", "t"), ("tick", "t")] and p.ticks == 1
    p.stop()


def test_stop_ends_the_thread_before_the_next_tick():
    p = Periodic(lambda: None, 3600).start()  # would first tick in an hour
    thread = p._thread
    p.stop()
    assert not thread.is_alive() and p.ticks == 0
