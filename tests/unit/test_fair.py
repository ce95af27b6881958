"""The circle scheduler alone: ordering, caps and hand-back, without Redis."""

from __future__ import annotations

import pytest

from rhailambda.shim.fair import CircleCaps, CircleScheduler


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fill(s: CircleScheduler[str], circle: str, n: int) -> None:
    for i in range(n):
        s.push(circle, f"{circle}{i}")


def test_one_circle_is_fifo_in_full_batches() -> None:
    s: CircleScheduler[str] = CircleScheduler()
    _fill(s, "a", 25)
    batches = [s.pop_batch(10) for _ in range(3)]
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [i for b in batches for _, i in b] == [f"a{i}" for i in range(25)]


def test_a_flood_does_not_delay_a_small_circle() -> None:
    s: CircleScheduler[str] = CircleScheduler()
    _fill(s, "a", 1000)
    _fill(s, "b", 5)
    first = s.pop_batch(10)
    assert sorted(i for c, i in first if c == "b") == [f"b{i}" for i in range(5)]
    # FIFO within each circle
    assert [i for c, i in first if c == "a"] == [f"a{i}" for i in range(5)]


def test_circles_alternate_within_a_batch() -> None:
    s: CircleScheduler[str] = CircleScheduler()
    _fill(s, "a", 4)
    _fill(s, "b", 4)
    assert [c for c, _ in s.pop_batch(6)] == ["a", "b", "a", "b", "a", "b"]


def test_one_circle_batches_never_mix_and_take_turns() -> None:
    s: CircleScheduler[str] = CircleScheduler()
    _fill(s, "a", 30)
    _fill(s, "b", 3)
    seen = []
    while len(s):
        batch = s.pop_batch(10, one_circle=True)
        assert len({c for c, _ in batch}) == 1
        seen.append((batch[0][0], len(batch)))
    assert seen == [("a", 10), ("b", 3), ("a", 10), ("a", 10)]


def test_concurrency_cap_skips_a_circle_until_release() -> None:
    s: CircleScheduler[str] = CircleScheduler(CircleCaps(max_running=2))
    _fill(s, "a", 10)
    _fill(s, "b", 10)
    batch = s.pop_batch(10)
    assert sorted(c for c, _ in batch) == ["a", "a", "b", "b"]
    assert s.pop_batch(10) == []
    assert s.wait_s() is None  # nothing can go before a release
    s.release("a", 1)
    assert [c for c, _ in s.pop_batch(10)] == ["a"]
    assert s.running("a") == 2


def test_rate_cap_is_a_token_bucket() -> None:
    clock = Clock()
    s: CircleScheduler[str] = CircleScheduler(CircleCaps(rate_per_s=5.0), clock=clock)
    _fill(s, "a", 100)
    started = len(s.pop_batch(100))  # the burst: one second's worth
    assert started == 5
    assert s.wait_s() == pytest.approx(0.2)
    for _ in range(100):  # ten seconds in steps of 0.1 s
        clock.now += 0.1
        started += len(s.pop_batch(100))
    assert started == pytest.approx(5 + 50, abs=1)


def test_rate_cap_of_one_circle_does_not_hold_back_another() -> None:
    clock = Clock()
    s: CircleScheduler[str] = CircleScheduler(CircleCaps(rate_per_s=1.0), clock=clock)
    _fill(s, "a", 10)
    _fill(s, "b", 10)
    assert sorted(c for c, _ in s.pop_batch(10)) == ["a", "b"]


def test_take_all_returns_every_held_id_in_order() -> None:
    s: CircleScheduler[str] = CircleScheduler()
    _fill(s, "a", 3)
    _fill(s, "b", 2)
    s.pop_batch(2)
    assert s.take_all() == [("a", "a1"), ("a", "a2"), ("b", "b1")]
    assert len(s) == 0
    assert s.pop_batch(10) == []


@pytest.mark.parametrize("caps", [{"max_running": 0}, {"rate_per_s": 0.0}])
def test_bad_caps_name_the_setting(caps: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RHAILAMBDA_PER_CIRCLE"):
        CircleCaps(**caps)  # type: ignore[arg-type]


def test_held_lists_every_circle_in_arrival_order() -> None:
    s: CircleScheduler[str] = CircleScheduler()
    for item in ["a0", "b0", "a1", "c0", "b1"]:
        s.push(item[0], item)
    assert [i for _, i in s.held()] == ["a0", "b0", "a1", "c0", "b1"]


def test_fair_off_is_oldest_first_across_circles_within_the_caps() -> None:
    s: CircleScheduler[str] = CircleScheduler(CircleCaps(max_running=2), fair=False)
    for item in ["a0", "a1", "a2", "b0", "a3", "b1"]:
        s.push(item[0], item)
    assert [i for _, i in s.pop_batch(10)] == ["a0", "a1", "b0", "b1"]  # a capped at 2
    s.release("a", 2)
    assert [i for _, i in s.pop_batch(10)] == ["a2", "a3"]


def test_pop_from_tops_up_one_circle_only() -> None:
    s: CircleScheduler[str] = CircleScheduler()
    _fill(s, "a", 3)
    _fill(s, "b", 3)
    assert [i for _, i in s.pop_from("b", 2)] == ["b0", "b1"]
    assert [i for _, i in s.pop_from("b", 5)] == ["b2"]
    assert [c for c, _ in s.pop_batch(10)] == ["a", "a", "a"]


def test_busiest_ranks_circles_by_queued_and_running() -> None:
    s: CircleScheduler[str] = CircleScheduler()
    _fill(s, "a", 5)
    _fill(s, "b", 2)
    _fill(s, "c", 1)
    s.pop_batch(3)  # one each: a 4+1, b 1+1, c 0+1
    assert s.busiest(2) == [("a", 4, 1), ("b", 1, 1)]
