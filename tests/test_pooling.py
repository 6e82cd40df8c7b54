import numpy as np
import pytest
import torch

from mirror_sfm.pooling import gem, l2n, mac, masked_mac, prmac_score, regional_mac, rmac_from_regions, rmac_windows


def test_mac_and_gem_by_hand():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]]]])  # (1, 2, 2, 2)
    assert mac(x).tolist() == [[4.0, 8.0]]
    # GeM p=3 of channel 0: ((1 + 8 + 27 + 64) / 4) ** (1/3) = 25 ** (1/3)
    assert gem(x, p=3)[0, 0].item() == pytest.approx(25 ** (1 / 3), rel=1e-5)
    assert gem(x, p=1)[0, 1].item() == pytest.approx(2.0, rel=1e-4)


def test_rmac_windows_match_mirror_formula():
    # H = 12: step 3 -> k = (12 // 4) * 2 = 6, stride (12 - 6) // 2 = 3; step 5 -> k = 4, stride 2
    assert rmac_windows(12, 3) == (6, 3)
    assert rmac_windows(12, 5) == (4, 2)
    assert rmac_windows(12, 1) == (12, 1)


def test_regional_mac_by_hand():
    # one channel, 12 x 12 map whose value is its row index: a region's max is its last row
    x = torch.arange(12.0)[:, None].expand(12, 12)[None, None].clone()
    regions = regional_mac(x)
    assert regions.shape == (1, 35, 1)
    r = regions[0, :, 0].tolist()
    assert r[0] == 11.0  # step 1: global max
    # step 3 windows start at rows 0, 3, 6 with height 6 -> last rows 5, 8, 11 (row-major 3 x 3 grid)
    assert r[1:10] == [5.0] * 3 + [8.0] * 3 + [11.0] * 3
    # step 5: starts 0, 2, 4, 6, 8 with height 4 -> last rows 3, 5, 7, 9, 11
    assert r[10:35] == sum(([v] * 5 for v in [3.0, 5.0, 7.0, 9.0, 11.0]), [])


def test_regional_mac_non_square_and_tiny_maps_keep_35_regions():
    assert regional_mac(torch.rand(2, 4, 9, 16)).shape == (2, 35, 4)
    assert regional_mac(torch.rand(1, 4, 2, 3)).shape == (1, 35, 4)


def test_rmac_is_normalised_sum_of_normalised_regions():
    regions = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])
    expected = np.array([0.6, 0.8 + 1.0])
    expected /= np.linalg.norm(expected)
    assert np.allclose(rmac_from_regions(regions)[0].numpy(), expected, atol=1e-5)


def test_prmac_score_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor(
        [
            [[1.0, 0.0], [0.6, 0.8]],  # best for q0: 1.0, for q1: 0.8 -> 1.8
            [[0.0, 1.0], [0.0, -1.0]],  # q0: 0.0, q1: 1.0 -> 1.0
        ]
    )
    assert prmac_score(q, d).tolist() == pytest.approx([1.8, 1.0])


def test_masked_mac_pools_inside_mask_only():
    x = torch.tensor([[[[9.0, 1.0], [2.0, 3.0]]]])
    mask = torch.tensor([[[False, True], [True, True]]])
    assert masked_mac(x, mask).item() == 3.0
    assert masked_mac(x, torch.zeros(1, 2, 2, dtype=torch.bool)).item() == 0.0
    # a mask at another resolution is resized to the map (nearest)
    big = torch.zeros(1, 4, 4, dtype=torch.bool)
    big[0, :2, :2] = True
    assert masked_mac(x, big).item() == 9.0


def test_l2n():
    v = l2n(torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(v, torch.tensor([[0.6, 0.8]]), atol=1e-5)
