import numpy as np
import pytest

from gtgen.ratios import combined_ratios, directional_ratios, incidence_from_sets, symmetric_ratios


def test_directional_and_symmetric_ratios_by_hand():
    sets = [np.array([0, 1, 2, 3]), np.array([2, 3]), np.array([9])]
    r = directional_ratios(incidence_from_sets(sets)).toarray()
    # |S0 & S1| = 2: r(0,1) = 2/4, r(1,0) = 2/2; image 2 meets nobody; diagonal empty
    assert r == pytest.approx(np.array([[0, 0.5, 0], [1.0, 0, 0], [0, 0, 0]]))
    s = symmetric_ratios(directional_ratios(incidence_from_sets(sets))).toarray()
    assert s[0, 1] == pytest.approx(np.sqrt(0.5)) and s[1, 0] == pytest.approx(np.sqrt(0.5))


def test_duplicate_elements_count_once():
    r = directional_ratios(incidence_from_sets([np.array([1, 1, 2]), np.array([2])])).toarray()
    assert r[0, 1] == pytest.approx(0.5)


def test_combined_ratio_uses_tracks_when_enough():
    ct = directional_ratios(incidence_from_sets([np.array([0, 1]), np.array([1, 2]), np.array([5])]))  # CT(0,1) = 0.5
    mo = directional_ratios(incidence_from_sets([np.array([0, 1, 2, 3]), np.array([3, 4, 5, 6]), np.array([6])]))
    co = combined_ratios(ct, mo, t_sfm=0.2).toarray()
    assert co[0, 1] == pytest.approx(1.0)  # CT >= 0.2
    assert co[1, 2] == pytest.approx(np.sqrt(0.25 * 1.0))  # CT = 0: falls back to MO
