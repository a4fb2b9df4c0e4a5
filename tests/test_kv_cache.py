"""The KV-cache module: Vidur's block arithmetic, admission rules and grouped growth."""
from __future__ import annotations

from math import ceil, inf

import numpy as np
import pytest

from vidur_env.kv_cache import BLOCK_SIZE, GroupGrowth, KVCache, ReservingKVCache
from vidur_env.request_table import RequestTable


def requests(*prompts: int) -> RequestTable:
    """A request table of the given prompt lengths (arrivals and outputs do not matter here)."""
    n = len(prompts)
    return RequestTable(np.zeros(n), np.asarray(prompts), np.full(n, 10))


def test_a_new_request_takes_the_blocks_of_its_whole_prompt():
    prompts = (1, 15, 16, 17, 4096, 4097)
    kv = KVCache(requests(*prompts), num_blocks=10**4, watermark_fraction=0.0)
    assert BLOCK_SIZE == 16
    assert [kv.admission_blocks(rid) for rid in range(len(prompts))] == [1, 1, 1, 2, 256, 257]


def test_admission_keeps_the_watermark_free():
    table = requests(100 * 16, 98 * 16, 98 * 16 + 1, 198 * 16, 198 * 16 + 1, 90 * 16)
    kv = KVCache(table, num_blocks=200, watermark_fraction=0.01)  # watermark: 2 blocks
    assert kv.watermark_blocks == 2
    assert kv.can_admit(3) and not kv.can_admit(4)
    kv.allocate(0)
    assert kv.can_admit(1) and not kv.can_admit(2)
    # blocks promised elsewhere (a grouped iteration's growth) count against the request
    assert kv.can_admit(5, reserved=8) and not kv.can_admit(5, reserved=9)
    assert kv.free_after(5, reserved=9) == 1
    assert kv.admission_blocks(2) == 99


def test_allocate_grow_free_account_for_blocks_and_requests():
    table = requests(1, 20, 1)
    kv = KVCache(table, num_blocks=50, watermark_fraction=0.0)
    kv.allocate(1)
    assert table.blocks == [0, 2, 0] and kv.allocated_blocks == 2 and kv.num_allocated_requests == 1
    table.processed[1] = 32
    assert kv.grow(1)  # still fits its two blocks
    assert table.blocks[1] == 2
    table.processed[1] = 33
    assert kv.grow(1)  # the 33rd token opens a third block
    assert table.blocks[1] == 3 and kv.allocated_blocks == 3
    kv.allocate(2)
    assert kv.utilization == pytest.approx(4 / 50)
    kv.free(1)
    assert table.blocks == [0, 0, 1] and kv.allocated_blocks == 1 and kv.num_allocated_requests == 1


def test_a_running_request_needs_one_free_block_and_a_group_keeps_one_per_decode():
    table = requests(9 * 16, 1)
    kv = KVCache(table, num_blocks=10, watermark_fraction=0.0)
    kv.allocate(0)
    assert not kv.grow_group(1)  # 1 free block: growing one would leave none for the others' checks
    assert kv.allocated_blocks == 9
    assert kv.grow_group(0)
    kv.allocate(1)
    assert kv.allocated_blocks == 10
    # no block free: Vidur refuses even a decode that needs none, and nothing is allocated
    table.processed[0] = 9 * 16
    assert not kv.grow(0)
    table.processed[0] = 9 * 16 + 1
    assert not kv.grow(0)
    assert table.blocks[0] == 9 and kv.allocated_blocks == 10


@pytest.mark.parametrize("num_blocks, watermark", [(100, 0.01), (1000, 0.05), (37, 0.0)])
def test_max_admissible_prompt_is_the_empty_cache_admission_bound(num_blocks, watermark):
    bound = int(KVCache(requests(1), num_blocks, watermark).max_admissible_prompt())
    kv = KVCache(requests(bound, bound + 1), num_blocks, watermark)
    assert kv.can_admit(0) and not kv.can_admit(1)


def test_reserving_cache_reserves_max_tokens_and_never_grows():
    table = requests(10, 1, 1)
    kv = ReservingKVCache(table, num_blocks=600, watermark_fraction=0.01, max_tokens=4096)
    assert kv.reserve_blocks == 256 and not kv.grows
    kv.allocate(0)  # a 10-token prompt still reserves max_tokens of KV
    assert table.blocks[0] == 256 and kv.allocated_blocks == 256
    table.processed[0] = 4000
    assert kv.grow(0)
    assert table.blocks[0] == 256
    assert kv.can_admit(1)  # 344 free >= 256, watermark not applied (Orca)
    kv.allocate(1)
    assert not kv.can_admit(2)
    assert kv.grow_group(0) and kv.allocated_blocks == 512
    assert kv.max_admissible_prompt() == inf
    assert ReservingKVCache(requests(1), 100, 0.01, 4096).max_admissible_prompt() == -1


def test_group_growth_matches_growing_each_request_every_tick():
    """The phase counts equal the blocks that Vidur's per-request growth takes at each tick,
    and leaving the group writes each request's exact block count back."""
    rng = np.random.default_rng(0)
    n, start, ticks = 40, 5, 100
    processed = rng.integers(2, 3000, size=n).tolist()
    exact = requests(*([1] * n))
    # as after an iteration: the blocks cover the tokens processed before it
    exact.blocks[:] = [ceil((p - 1) / BLOCK_SIZE) for p in processed]
    grouped = list(exact.blocks)
    growth = GroupGrowth(grouped, grows=True)
    reference = KVCache(exact, num_blocks=10**6, watermark_fraction=0.0)
    for rid, p in enumerate(processed):
        growth.join(rid, offset=p - start, tick=start)
    leave_at = rng.integers(start + 1, start + ticks, size=n)
    for tick in range(start, start + ticks):
        before = reference.allocated_blocks
        for rid in range(n):
            if tick < leave_at[rid]:  # still a member when the iteration at ``tick`` is formed
                exact.processed[rid] = processed[rid] + tick - start
                reference.grow(rid)
        assert growth.at(tick) == reference.allocated_blocks - before
        for rid in np.flatnonzero(leave_at == tick + 1):
            growth.leave(int(rid), tick + 1)
    assert reference.allocated_blocks > n  # the case spans several block boundaries
    assert grouped == exact.blocks
    assert sum(growth.phase) == 0


def test_group_growth_rejects_a_member_whose_blocks_do_not_cover_it():
    growth = GroupGrowth([1], grows=True)
    with pytest.raises(RuntimeError, match="request 0"):
        growth.join(0, offset=20, tick=0)  # 20 processed tokens in one 16-token block


def test_group_growth_of_a_reserving_cache_is_always_zero():
    table = requests(1)
    table.blocks[0] = 256
    growth = ReservingKVCache(table, 1000, 0.0, 4096).group_growth()
    growth.join(0, offset=100, tick=0)
    assert [growth.at(t) for t in range(3 * BLOCK_SIZE)] == [0] * (3 * BLOCK_SIZE)
    growth.leave(0, 3 * BLOCK_SIZE)
    assert table.blocks == [256]
