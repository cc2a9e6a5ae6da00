import pytest

from momentumgs.train.slots import SlotSchedule


def _run(schedule):
    trace = []
    while not schedule.finished:
        trace.append(tuple(schedule.current(w) for w in range(schedule.workers)))
        schedule.advance()
    return trace


def test_rotation_every_slot_and_equal_iterations_per_block():
    s = SlotSchedule(n_blocks=5, workers=2, slot_iterations=3, iterations=7)
    trace = _run(s)
    assert s.done_iterations == [7] * 5
    # worker 0 holds blocks 0, 2, 4 and worker 1 holds 1, 3; each switches after 3 steps
    assert [t[0] for t in trace[:9]] == [0, 0, 0, 2, 2, 2, 4, 4, 4]
    assert [t[1] for t in trace[:9]] == [1, 1, 1, 3, 3, 3, 1, 1, 1]
    # a block never runs on two workers at once, and an idle worker reports None
    assert all(t[0] != t[1] for t in trace if None not in t)
    assert trace[-1][1] is None  # worker 1 (2 blocks) finishes before worker 0 (3 blocks)
    assert len(trace) == s.total_steps == 3 * 7
    counts = {b: sum(t.count(b) for t in trace) for b in range(5)}
    assert counts == {b: 7 for b in range(5)}


def test_state_round_trip_continues_identically():
    a = SlotSchedule(4, 2, 2, 5)
    for _ in range(7):
        a.advance()
    b = SlotSchedule(4, 2, 2, 5)
    b.load_state_dict(a.state_dict())
    assert _run(a) == _run(b)


def test_more_workers_than_blocks_is_refused():
    with pytest.raises(ValueError, match="3 workers for 2 blocks"):
        SlotSchedule(2, 3, 10, 10)


def test_next_block_is_the_block_the_worker_holds_after_its_slot():
    s = SlotSchedule(n_blocks=5, workers=2, slot_iterations=3, iterations=7)
    while not s.finished:
        expected = []
        for w in range(s.workers):
            current = s.current(w)
            later = s.current(w)
            probe = SlotSchedule(5, 2, 3, 7)
            probe.load_state_dict(s.state_dict())
            while current is not None and later == current and not probe.finished:
                probe.advance()
                later = probe.current(w)
            # the next different block the worker takes, unless none other is left to it
            expected.append(later if later != current else None)
        assert [s.next_block(w) for w in range(s.workers)] == expected
        s.advance()
    assert s.next_block(0) is None and SlotSchedule(1, 1, 3, 7).next_block(0) is None
