"""Where a training loop stops: between whole steps, on every rank at the same one (`signals.StepStops`)."""

import os
import signal

import pytest

from mqvq import signals


@pytest.fixture
def handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, *signals.STOP_SIGNALS)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    signals.received_sigterm = False


def test_a_stop_signal_mid_step_stops_at_the_steps_end_and_a_repeat_is_ignored(handlers):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals.stops_between_steps() as stops:
            for step in range(5):
                with stops.step():
                    if step == 1:
                        os.kill(os.getpid(), signal.SIGUSR2)
                        os.kill(os.getpid(), signal.SIGUSR2)  # torchrun's forwarded copy of SLURM's signal
                    done.append(step)  # the rest of the step still runs
    assert done == [0, 1] and signals.received_sigterm
    assert (
        signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    )  # the checkpoint and bookkeeping that follow are not cut short


def test_every_rank_stops_at_the_step_where_any_rank_got_the_signal(handlers):
    """This process got nothing; the other rank did, at step 2: the agreement stops this one there too."""
    asked = []

    def any_rank(flag):
        asked.append(flag)
        return flag or len(asked) == 3

    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals.stops_between_steps(any_rank) as stops:
            for step in range(5):
                with stops.step():
                    done.append(step)
    assert done == [0, 1, 2] and asked == [False, False, False]


def test_a_signal_after_the_last_step_still_stops_and_a_quiet_loop_restores_the_handlers(handlers):
    before = signal.getsignal(signal.SIGTERM)
    with signals.stops_between_steps() as stops:
        with stops.step():
            pass
    assert signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(KeyboardInterrupt):
        with signals.stops_between_steps() as stops:
            with stops.step():
                pass
            os.kill(os.getpid(), signal.SIGTERM)  # during the final save, after the last step's check
