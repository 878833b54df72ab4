"""Stop requests without Spark: the exit codes, the one line, handlers installed and given back."""

from __future__ import annotations

import os
import signal
import threading

from pipelines.orchestration.signals import StopRequest


def test_a_signal_is_a_request_to_stop_with_its_exit_code() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with StopRequest().install() as stop:
        assert signal.getsignal(signal.SIGTERM) is not previous
        os.kill(os.getpid(), signal.SIGTERM)  # handled: sets the flag, never raises
        assert stop.requested and stop.exit_code == 143 and stop.signal_name == "SIGTERM"
        error = stop.error(7, "nightly-1")
        assert str(error) == "terminated by SIGTERM at epoch 7; rerun with sweep.id=nightly-1 to resume"
        assert error.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is previous  # the block gives the handlers back
    for thread in threading.enumerate():  # the watchdog is disarmed when the clean-up is over
        if thread.name == "lrsweep-stop-watchdog":
            thread.join(timeout=5)
            assert not thread.is_alive()


def test_sigint_exits_130_and_a_second_signal_changes_nothing() -> None:
    stop = StopRequest()
    stop.request(signal.SIGINT)
    stop.request(signal.SIGTERM)
    assert stop.exit_code == 130 and stop.terminated("while scoring").exit_code == 130
    assert not any(t.name == "lrsweep-stop-watchdog" for t in threading.enumerate())  # only real signals arm it
