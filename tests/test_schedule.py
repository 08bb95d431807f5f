import itertools

import pytest

from hyperlips.schedule import runs, source_index


@pytest.mark.parametrize("n_src", [1, 2, 3, 7])
@pytest.mark.parametrize("n_out", [1, 5, 6, 20, 33])
@pytest.mark.parametrize("loop", ["pingpong", "hold"])
def test_runs_match_source_index(n_src, n_out, loop):
    flat = list(itertools.chain.from_iterable(r.indices() for r in runs(n_src, n_out, loop)))
    assert len(flat) == n_out
    assert flat == [source_index(j, n_src, loop) for j in range(n_out)]


def test_pingpong_order_has_no_jump():
    seq = [source_index(j, 4) for j in range(12)]
    assert seq == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert all(abs(a - b) == 1 for a, b in zip(seq, seq[1:]))


def test_hold_repeats_last_frame_and_cut_when_audio_shorter():
    assert [source_index(j, 3, "hold") for j in range(5)] == [0, 1, 2, 2, 2]
    assert list(itertools.chain.from_iterable(r.indices() for r in runs(10, 4))) == [0, 1, 2, 3]


def test_bad_loop_mode():
    with pytest.raises(ValueError):
        list(runs(3, 10, "bounce"))
