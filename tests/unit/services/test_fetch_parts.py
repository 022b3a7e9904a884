"""The loader's pure arithmetic: ranges aligned to the upload's parts, sizes, the journal."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.services.fetch_parts import Journal, Range, plan_object, parse_size

MiB = 1024 * 1024

unit_lists = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=12)


@settings(deadline=None)
@given(unit_lists, st.integers(min_value=1, max_value=64), st.booleans())
def test_ranges_cover_the_object_once_in_order_and_never_cut_a_part_they_can_hold(
        unit_sizes, part_size, single):
    sizes = [sum(unit_sizes)] if single else unit_sizes
    size = sum(sizes)
    plan = plan_object(size=size, unit_sizes=sizes, part_size=part_size)

    assert [r.start for r in plan.ranges] == [0, *(r.end for r in plan.ranges[:-1])]
    assert plan.ranges[-1].end == size
    for rng in plan.ranges:
        if rng.units:
            # A range of whole parts: exactly their bytes, and within the part size unless one
            # part alone is larger.
            assert rng.within is None
            assert (rng.start, rng.end) == (plan.units[rng.units[0]].start, plan.units[rng.units[-1]].end)
            assert rng.length <= part_size
        else:
            unit = plan.units[rng.within]
            assert unit.length > part_size and unit.start <= rng.start < rng.end <= unit.end
            assert rng.length <= part_size
    covered = sorted(u for r in plan.ranges for u in r.units) + sorted(plan.split_units)
    assert sorted(covered) == list(range(len(sizes)))


def test_parts_of_eight_mib_are_fetched_two_by_two_in_sixteen_mib_ranges():
    plan = plan_object(size=20 * MiB, unit_sizes=[8 * MiB, 8 * MiB, 4 * MiB], part_size=16 * MiB)
    assert plan.ranges == (Range(0, 16 * MiB, units=(0, 1)), Range(16 * MiB, 4 * MiB, units=(2,)))


def test_a_single_part_object_is_split_and_its_md5_carried_across_ranges():
    plan = plan_object(size=40 * MiB, unit_sizes=[40 * MiB], part_size=16 * MiB)
    assert [(r.start, r.length, r.within) for r in plan.ranges] == [
        (0, 16 * MiB, 0), (16 * MiB, 16 * MiB, 0), (32 * MiB, 8 * MiB, 0)]
    assert plan.split_units == {0}


def test_an_object_checked_by_size_only_has_ranges_and_no_units():
    plan = plan_object(size=5, unit_sizes=None, part_size=2)
    assert (plan.units, [(r.start, r.length) for r in plan.ranges]) == ((), [(0, 2), (2, 2), (4, 1)])


def test_an_empty_object_has_one_empty_range_carrying_the_md5_of_nothing():
    assert plan_object(size=0, unit_sizes=[0], part_size=MiB).ranges == (Range(0, 0, units=(0,)),)


def test_unit_sizes_that_do_not_add_up_to_the_object_are_refused():
    with pytest.raises(ValueError, match="unit sizes add up to 3, not the object's 4 bytes"):
        plan_object(size=4, unit_sizes=[1, 2], part_size=MiB)


@pytest.mark.parametrize(("text", "size"), [("16Mi", 16 * MiB), ("16MiB", 16 * MiB), ("8M", 8_000_000),
                                            ("1Gi", 1024 * MiB), ("1048576", MiB), (" 2 mi ", 2 * MiB)])
def test_sizes_are_read_as_kubernetes_and_humans_write_them(text, size):
    assert parse_size(text) == size


def test_a_size_that_is_no_size_says_how_to_write_one():
    with pytest.raises(ValueError, match="'sixteen' is not a size: write bytes or a number with Ki, Mi, Gi"):
        parse_size("sixteen")


def test_a_journal_reads_back_what_it_wrote():
    plan = plan_object(size=40 * MiB, unit_sizes=[8 * MiB] * 5, part_size=16 * MiB)
    journal = Journal(key="m/x.gguf", etag="abc-5", size=40 * MiB, last_modified="2026-11-30T10:00:00+00:00",
                      ranges=plan.ranges, done={0: {"digests": ["aa", "bb"]}, 32 * MiB: {"digests": ["cc"]}})

    again = Journal.from_json(journal.to_json())

    assert again == journal
    assert again.bytes_done == 24 * MiB
    assert again.matches(key="m/x.gguf", etag="abc-5", size=40 * MiB,
                         last_modified="2026-11-30T10:00:00+00:00")
    assert not again.matches(key="m/x.gguf", etag="abd-5", size=40 * MiB,
                             last_modified="2026-11-30T10:00:00+00:00")


@pytest.mark.parametrize("text", ["", "{", "[]", '{"version": 99}',
                                  '{"version": 1, "key": "k", "etag": "e", "size": 1, "ranges": [[0, 1, [], null]], '
                                  '"done": {"7": {"crc32": 1}}}'])
def test_text_that_is_no_journal_of_this_version_is_ignored(text):
    assert Journal.from_json(text) is None
