"""Engine-core placement: --engine-cores as a count or a CPU list, and the default from the CPU count."""

from __future__ import annotations

import pytest

from streamhost.engine.core_placement import (
    FRONTEND_RESERVED_CPUS,
    LARGE_MACHINE_RESERVED,
    check_spec,
    format_cpus,
    parse_cpus,
    plan_placement,
)


def test_cpu_lists_round_trip_in_the_kernels_form():
    assert parse_cpus("0-1,3") == (0, 1, 3)
    assert parse_cpus("5") == (5,)
    assert format_cpus((0, 1, 3)) == "0-1,3"
    assert format_cpus((2, 3, 4, 7, 8)) == "2-4,7-8"


@pytest.mark.parametrize("bad", ["two", "1-", "3-1", "-1", "0,,1", "0"])
def test_bad_specs_are_refused_with_the_flag_named(bad):
    with pytest.raises(ValueError, match="--engine-cores"):
        check_spec(bad)


def test_a_count_takes_the_last_cores_and_leaves_the_rest_to_the_front_end():
    placement = plan_placement("1", [0, 1, 2, 3])
    assert placement.engine_cpus == (3,) and placement.frontend_cpus == (0, 1, 2) and placement.threads == 1
    assert plan_placement("9", [0, 1]).engine_cpus == (0, 1)  # no more than there are


def test_a_list_is_taken_as_given_and_all_cores_means_a_shared_front_end():
    placement = plan_placement("0-1", [0, 1])
    assert placement.engine_cpus == (0, 1) and placement.frontend_cpus is None
    single = plan_placement("0-0", [0, 1])  # one CPU as a list (a bare number is a count)
    assert single.engine_cpus == (0,) and single.frontend_cpus == (1,)


def test_the_default_follows_the_cpu_count():
    for cpus in (1, 2, 4, 16):
        usable = list(range(cpus))
        reserved = FRONTEND_RESERVED_CPUS.get(cpus, LARGE_MACHINE_RESERVED)
        placement = plan_placement(None, usable)
        assert len(placement.engine_cpus) == max(1, cpus - reserved)
        assert placement.engine_cpus[-1] == cpus - 1
    assert len(plan_placement(None, range(16)).engine_cpus) == 15  # one kept for the front end, as vLLM does
