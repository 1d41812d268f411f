from hypothesis import given
from hypothesis import strategies as st

from supervisor.assignment import Partition, assign, moves, owner_of, rebalance


def parts(n, pipeline="events"):
    return [Partition(pipeline, i) for i in range(n)]


@given(st.integers(1, 64), st.integers(1, 16))
def test_every_partition_has_exactly_one_owner(p, n):
    a = assign(parts(p), n)
    owners = [x for ps in a.values() for x in ps]
    assert sorted(owners) == sorted(parts(p))
    assert set(a) == set(range(n))


@given(st.integers(1, 64), st.integers(1, 16))
def test_load_is_balanced(p, n):
    a = assign(parts(p), n)
    sizes = [len(ps) for ps in a.values()]
    assert max(sizes) <= -(-p // n)


def test_assignment_is_deterministic_and_stable_across_calls():
    assert assign(parts(16), 3) == assign(list(reversed(parts(16))), 3)


@given(st.integers(8, 64), st.integers(2, 8))
def test_resizing_moves_only_the_overflow(p, n):
    for m in (n + 1, n - 1 or 1, 2 * n):
        old = assign(parts(p), n)
        new = rebalance(old, parts(p), m)
        cap = -(-p // m)
        # The minimum: partitions of removed slots plus each kept slot's excess over the cap.
        must_move = sum(max(0, len(ps) - cap) if s < m else len(ps) for s, ps in old.items())
        assert len(moves(old, new)) == must_move
        assert max(len(ps) for ps in new.values()) <= cap
        assert sorted(owner_of(new)) == parts(p)


def test_rebalance_places_new_partitions_and_drops_gone_ones():
    old = assign(parts(8), 2)
    new = rebalance(old, parts(6) + parts(2, "other"), 2)
    assert sorted(owner_of(new)) == sorted(parts(6) + parts(2, "other"))


def test_pipelines_are_distinguished():
    a = assign(parts(4, "a") + parts(4, "b"), 2)
    assert len(owner_of(a)) == 8
