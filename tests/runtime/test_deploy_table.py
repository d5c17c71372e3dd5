"""deploy's final table: every episode, safety events explained (limits apart from stops), latency, server counters."""

from hardware.protocol import messages as m
from robotstack.cli.deploy import final_table
from robotstack.runtime.controller import EpisodeResult
from robotstack.runtime.telemetry import Telemetry


def test_final_table_explains_safety_events_and_shows_server_counters():
    tel = Telemetry(deadline_s=0.01)
    for i in range(5):
        row = tel.begin_step(1_000_000 * i, 1_000_000 * i + 100_000, 1_000_000 * i + 300_000)
        tel.sent(row, i + 1, 1_000_000 * i + 500_000)
    results = [EpisodeResult(steps=40, success=False, stop_reason="max_steps", interventions=0, seconds=2.0,
                             safety={"max_change_limited": 3}),
               EpisodeResult(steps=7, success=None, stop_reason="safety stop: nonfinite_output: ...", interventions=1,
                             seconds=0.4, ok=False, safety={"nonfinite_output": 1})]
    st = m.Status(None, True, "hold", False, 0, rejects={"stale": 2, "future": 1}, detail="holding (stale)")
    text = final_table(results, tel, st)
    assert "success 0/1" in text and "interventions 1" in text
    assert "limit max_change_limited" in text and "more than max_delta" in text
    assert "stop  nonfinite_output" in text
    assert "state_to_target" in text and "0.500" in text
    assert "future 1" in text and "stale 2" in text
    assert "no answer" in final_table(results, tel, None)
