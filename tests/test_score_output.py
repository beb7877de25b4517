"""The scoring output folder's record of committed ids, which a resumed run filters its input by."""
from __future__ import annotations

import pickle

import numpy as np

from distdl.score_output import IdSet


def test_committed_integer_ids_are_found_whether_numpy_or_python_ints():
    done = IdSet([3, 1, 2])
    assert len(done) == 3
    assert done.contains(np.arange(5)).tolist() == [False, True, True, True, False]
    assert done.contains([2, 7]).tolist() == [True, False]


def test_string_ids_match_exactly_whatever_their_length_or_trailing_nul():
    done = IdSet(["a", "bb", "a\0", "images/cat 1.png"])
    asked = np.array(["a", "a\0", "a\0\0", "bbb", "b", "", "images/cat 1.png", "images/cat 1.png.bak"], dtype=object)
    assert done.contains(asked).tolist() == [True, True, False, False, False, False, True, False]


def test_nothing_is_committed_in_an_empty_set():
    done = IdSet([])
    assert len(done) == 0 and not done
    assert done.contains(np.array(["x", "y"], dtype=object)).tolist() == [False, False]


def test_it_survives_the_trip_to_every_read_task():
    done = pickle.loads(pickle.dumps(IdSet(range(1000)), protocol=5))
    assert done.contains([999, 1000]).tolist() == [True, False]
