"""The compiled Maglev core: table shape, consistency, bounded load, exclusions, accounting."""
import random
from collections import Counter

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy import _hashing
from fastproxy._hashing import Maglev, is_prime, next_prime, table_size_for
from fastproxy.upstream.group import Server


def pool(n, weights=None, base="10.0.0."):
    weights = weights or [1] * n
    return [Server(f"{base}{i}", 8000 + i, weight=w) for i, w in enumerate(weights)]


def keys(count, seed=1):
    rnd = random.Random(seed)
    return [rnd.getrandbits(64) for _ in range(count)]


def owner_names(table, ks):
    names = [s.name for s in table.servers]
    return [names[i] for i in table.owners(ks)]


def test_primes():
    assert [m for m in range(30) if is_prime(m)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert next_prime(65536) == 65537
    assert next_prime(65537) == 65537
    assert not is_prime(65537 * 3)


def test_table_size_is_prime_with_100_entries_for_the_lightest_server():
    assert table_size_for([1] * 10) == 65537
    big = table_size_for([1] * 1000)
    assert is_prime(big) and big >= 100 * 1000
    skewed = table_size_for([1, 1000, 1000])
    assert is_prime(skewed) and skewed * 1 / 2001 >= 100
    assert table_size_for([]) == 0
    # A configured size replaces the default (small tables for many small pools)...
    assert table_size_for([1, 1], minimum=1000) == 1009
    # ...but never drops below 100 entries per server.
    assert table_size_for([1] * 20, minimum=1000) == next_prime(2000)
    assert Maglev(pool(3), table_size=70001).table_size == 70001


def test_equal_weights_share_the_table_within_one_entry():
    table = Maglev(pool(10))
    entries = table.entries()
    assert sum(entries) == table.table_size
    assert max(entries) - min(entries) <= 1


def test_weights_set_the_share_of_the_table():
    table = Maglev(pool(3, [1, 2, 5]))
    share = [e / table.table_size for e in table.entries()]
    for got, want in zip(share, [1 / 8, 2 / 8, 5 / 8]):
        assert abs(got - want) < 0.002


def test_one_million_keys_spread_evenly():
    table = Maglev(pool(10))
    counts = Counter(table.owners(keys(1_000_000)))
    assert len(counts) == 10
    assert max(counts.values()) / (1_000_000 / 10) <= 1.02


def test_table_depends_only_on_names_and_weights():
    ks = keys(20_000)
    a = Maglev(pool(7))
    b = Maglev(list(reversed(pool(7))))  # other objects, other order
    assert owner_names(a, ks) == owner_names(b, ks)


def test_removal_moves_about_the_removed_share_and_return_restores_every_key():
    servers = pool(10)
    ks = keys(200_000)
    table = Maglev(servers)
    before = owner_names(table, ks)
    gone = servers[3].name
    table.update([s for s in servers if s.name != gone])
    after = owner_names(table, ks)
    moved = sum(1 for x, y in zip(before, after) if x != y)
    own = sum(1 for x in before if x == gone)
    assert all(y != gone for y in after)
    assert moved / len(ks) <= 0.105
    # Keys of surviving servers barely move (Maglev trades a little of this for balance).
    assert (moved - own) / len(ks) <= 0.01
    table.update(servers)
    assert owner_names(table, ks) == before


def test_addition_moves_about_the_new_share():
    servers = pool(10)
    ks = keys(200_000)
    table = Maglev(servers)
    before = owner_names(table, ks)
    table.update(servers + [Server("10.0.1.1", 9000)])
    after = owner_names(table, ks)
    moved = sum(1 for x, y in zip(before, after) if x != y)
    assert moved / len(ks) <= 1 / 11 + 0.01
    assert sum(1 for x, y in zip(before, after) if x != y and y != "10.0.1.1:9000") / len(ks) < 0.01


def test_same_key_same_server_without_load():
    table = Maglev(pool(5))
    for key in keys(1000):
        first = table.pick(key)
        assert first is table.owner(key)
        assert table.pick(key) is first


def test_pick_takes_python_ints_over_63_bits():
    table = Maglev(pool(5))
    assert table.pick(2**64 - 1) is table.owner(2**64 - 1)
    with pytest.raises(OverflowError):
        table.pick(2**64)
    with pytest.raises(OverflowError):
        table.pick(-1)


def test_empty_pool_and_single_server():
    assert Maglev([]).pick(123) is None
    assert Maglev([]).preference(1) == []
    assert len(Maglev([])) == 0
    (only,) = servers = pool(1)
    table = Maglev(servers)
    for _ in range(50):
        table.acquire(only)  # a lone server always takes the request, whatever its load
    assert table.pick(99) is only
    assert table.pick(99, exclude=[only]) is None
    table.update([])
    assert table.pick(99) is None


def test_exclude_walks_the_preference_order():
    servers = pool(8)
    table = Maglev(servers, balance_factor=0)
    for key in keys(300):
        order = table.preference(key)
        assert len(order) == 8 and set(order) == set(servers)
        assert table.pick(key, exclude=order[:1]) is order[1]
        assert table.pick(key, exclude=(order[0], order[2], order[1])) is order[3]
        assert table.pick(key, exclude=set(order[:-1])) is order[-1]
        assert table.pick(key, exclude=order) is None
        assert table.pick(key, exclude=[Server("not.a.member", 1)]) is order[0]


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(1, 20), min_size=1, max_size=12),
    key=st.integers(0, 2**64 - 1),
    mask=st.integers(0, 2**12 - 1),
)
def test_pick_is_the_first_allowed_server_in_preference_order(weights, key, mask):
    servers = pool(len(weights), weights)
    table = Maglev(servers, balance_factor=0)
    excluded = [s for i, s in enumerate(servers) if mask >> i & 1]
    allowed = [s for s in table.preference(key) if s not in excluded]
    assert table.pick(key, exclude=excluded) is (allowed[0] if allowed else None)


def test_acquire_release_track_active_and_total():
    servers = pool(4)
    table = Maglev(servers)
    a, b = table.servers[0], table.servers[1]
    table.acquire(a)
    table.acquire(a)
    table.acquire(b)
    assert (a.active, b.active, table.total_active) == (2, 1, 3)
    assert table.in_flight() == [2, 1, 0, 0]
    table.release(a)
    assert (a.active, table.total_active) == (1, 2)
    # b leaves the eligible set with a request in flight; its release must not skew the total.
    table.update([s for s in servers if s is not b])
    assert table.total_active == 1
    table.release(b)
    assert (b.active, table.total_active) == (0, 1)
    table.release(b)  # a spurious release never drives counts negative
    assert b.active == 0
    table.update(servers)  # back in: counts are read from server.active
    assert table.total_active == 1 and table.in_flight()[0] == 1


def zipf_keys(count, n_keys, s=1.1, seed=7):
    rnd = random.Random(seed)
    weights = [1 / (rank ** s) for rank in range(1, n_keys + 1)]
    population = [xxhash.xxh3_64_intdigest(f"/object/{i}".encode()) for i in range(n_keys)]
    return rnd.choices(population, weights, k=count)


def test_bounded_load_cap_holds_under_a_zipf_stream():
    servers = pool(10)
    factor = 1.25
    table = Maglev(servers, balance_factor=factor)
    concurrency = 200
    window = []
    worst = 0.0
    for key in zipf_keys(20_000, 5_000):
        if len(window) == concurrency:
            table.release(window.pop(0))
        total = table.total_active
        server = table.pick(key)
        # The cap of HAProxy/Envoy: ceil(c * (total + 1) / n) for equal weights.
        cap = -(-int(factor * 1000) * (total + 1) // (1000 * len(servers)))
        assert server.active + 1 <= cap
        table.acquire(server)
        if len(window) == concurrency - 1:
            worst = max(worst, max(table.in_flight()) / (table.total_active / len(servers)))
        window.append(server)
    assert worst <= factor
    # Without the bound the hottest key's owner takes far more than its share.
    unbounded = Maglev(pool(10), balance_factor=0)
    counts = Counter(unbounded.owner(k).name for k in zipf_keys(20_000, 5_000))
    assert max(counts.values()) / (20_000 / 10) > 1.5


def test_bounded_load_keeps_keys_home_when_load_is_even():
    servers = pool(10)
    table = Maglev(servers)
    for server in servers:
        for _ in range(10):
            table.acquire(server)
    for key in keys(500):
        assert table.pick(key) is table.owner(key)


def test_bounded_load_passes_a_loaded_server_to_the_next_preference():
    servers = pool(5)
    table = Maglev(servers, balance_factor=1.25)
    key = keys(1)[0]
    first, second = table.preference(key, 2)
    for _ in range(10):
        table.acquire(first)
    # total 10, cap = ceil(1.25 * 11 / 5) = 3: the owner is full, the next one is empty
    assert table.pick(key) is second
    assert table.pick(key, exclude=[second]) is not first


def test_bounded_load_respects_weights():
    servers = pool(2, [1, 3])
    table = Maglev(servers, balance_factor=1.0)
    light, heavy = table.servers
    for _ in range(4):
        table.acquire(heavy)
    # total 4, heavy's cap = ceil(1.0 * 5 * 3 / 4) = 4: full; light's cap = ceil(5 / 4) = 2
    heavy_keys = [k for k in keys(2000) if table.owner(k) is heavy]
    assert heavy_keys and all(table.pick(k) is light for k in heavy_keys)


def test_extreme_weights_still_reach_every_server():
    servers = pool(3, [1, 10000, 10000])
    table = Maglev(servers)
    assert min(table.entries()) >= 100
    light = table.servers[0]
    assert any(table.pick(k) is light for k in keys(100_000))


@pytest.mark.parametrize("bad", [
    dict(table_size=-1), dict(table_size=_hashing.MAX_TABLE_SIZE + 1),
    dict(balance_factor=0.5), dict(balance_factor=1000.0),
])
def test_bad_options_name_the_key(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Maglev(pool(2), **bad)


@pytest.mark.parametrize("weight", [0, -1, 1.5, True, _hashing.MAX_WEIGHT + 1])
def test_bad_weights_are_refused(weight):
    with pytest.raises(ValueError, match="weight"):
        Maglev([Server("a", 1, weight=weight)])


def test_duplicate_servers_are_refused():
    with pytest.raises(ValueError, match="listed twice"):
        Maglev([Server("a", 1), Server("a", 1)])


def test_failed_update_keeps_the_old_table():
    servers = pool(3)
    table = Maglev(servers)
    with pytest.raises(ValueError):
        table.update(servers + [Server("bad", 1, weight=0)])
    assert table.servers == sorted(servers, key=lambda s: s.name)
    assert table.pick(5) in servers
