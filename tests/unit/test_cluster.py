import random

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.assignment import Partition
from supervisor.cluster import owners, share


def parts(n, pipeline="events"):
    return [Partition(pipeline, i) for i in range(n)]


names = st.lists(st.from_regex(r"[a-z]{1,6}", fullmatch=True), min_size=1, max_size=6, unique=True)


def settled(partitions, instances):
    """Where a cluster of `instances` ends up from nothing: share() until nothing moves."""
    holdings = {}
    for _ in range(10):
        nxt = share(partitions, instances, holdings)
        if nxt == holdings:
            return nxt
        holdings = nxt
    raise AssertionError("share() did not reach a fixed point")


@given(st.integers(0, 64), names)
def test_every_partition_has_one_owner_and_loads_differ_by_at_most_one(p, instances):
    a = share(parts(p), instances)
    assert sorted(x for ps in a.values() for x in ps) == parts(p)
    assert set(a) == set(instances)
    sizes = [len(ps) for ps in a.values()]
    assert max(sizes) - min(sizes) <= 1


@given(st.integers(0, 64), names)
def test_a_settled_share_is_a_fixed_point(p, instances):
    a = settled(parts(p), instances)
    assert share(parts(p), instances, a) == a
    assert share(parts(p), list(reversed(instances)), a) == a


@given(st.integers(1, 64), names, st.from_regex(r"[A-Z]{1,4}", fullmatch=True))
def test_a_joining_instance_takes_only_partitions_others_give_up(p, instances, newcomer):
    before = settled(parts(p), instances)
    after = share(parts(p), [*instances, newcomer], before)
    was, now = owners(before), owners(after)
    moved = [x for x in parts(p) if was[x] != now[x]]
    assert all(now[x] == newcomer for x in moved)
    assert len(moved) == len(after[newcomer])


@given(st.integers(1, 64), names.filter(lambda n: len(n) > 1), st.randoms(use_true_random=False))
def test_a_leaving_instance_moves_only_its_own_partitions(p, instances, rnd):
    before = settled(parts(p), instances)
    gone = rnd.choice(instances)
    rest = [i for i in instances if i != gone]
    after = share(parts(p), rest, {i: before[i] for i in rest})
    was, now = owners(before), owners(after)
    assert {x for x in parts(p) if was[x] != now[x]} == set(before[gone])


@settings(max_examples=50)
@given(st.integers(1, 48), names, st.randoms(use_true_random=False))
def test_the_answer_holds_while_instances_release_and_acquire_one_by_one(p, instances, rnd):
    """Halfway through a move (some released, some acquired) every instance computes the same target."""
    start = {i: tuple(rnd.sample(parts(p), k=min(p, rnd.randint(0, p)))) for i in instances}
    # A start where each partition is held at most once (the protocol's invariant).
    seen, holdings = set(), {}
    for i in instances:
        holdings[i] = [x for x in start[i] if not (x in seen or seen.add(x))]
    target = share(parts(p), instances, holdings)
    steps = [("release", i, x) for i in instances for x in holdings[i] if x not in target[i]]
    steps += [("acquire", i, x) for i in instances for x in target[i] if x not in holdings[i]]
    releases = [s for s in steps if s[0] == "release"]
    acquires = [s for s in steps if s[0] == "acquire"]
    rnd.shuffle(releases)
    rnd.shuffle(acquires)
    current = {i: set(ps) for i, ps in holdings.items()}
    # Release before acquire: a partition is acquired only once nobody holds it.
    for kind, i, x in releases + acquires:
        if kind == "release":
            current[i].discard(x)
        else:
            assert not any(x in ps for ps in current.values())
            current[i].add(x)
        assert share(parts(p), instances, current) == target


def test_deterministic_whatever_the_order_of_the_inputs():
    ps = parts(16)
    shuffled = ps[:]
    random.Random(1).shuffle(shuffled)
    assert share(ps, ["a", "b", "c"]) == share(shuffled, ["c", "a", "b"])
