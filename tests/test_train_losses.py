"""MIRorR losses (eqs. 5-8) against values worked out by hand."""

import math

import pytest
import torch

from mirror_sfm.train.losses import (
    LossOptions,
    batched_loss,
    distance,
    hardest_negatives,
    mask_to_map,
    mask_triplet_loss,
    masked_descriptors,
    triplet_loss,
)

R2 = math.sqrt(2.0)


def unit(deg: float, dim: int = 2) -> torch.Tensor:
    v = torch.zeros(dim, dtype=torch.float64)
    v[0], v[1] = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return v


def e(k: int, dim: int = 4) -> torch.Tensor:
    v = torch.zeros(dim, dtype=torch.float64)
    v[k] = 1.0
    return v


# unit vectors: D(0 deg, 60 deg) = 2 sin 30 = 1; D(0, 90) = sqrt 2; D(60, 90) = 2 sin 15
A, P, N = unit(0)[None], unit(60)[None], unit(90)[None]
D_PN = 2 * math.sin(math.radians(15))


def test_distance_is_euclidean_or_squared():
    assert distance(A, P).item() == pytest.approx(1.0)
    assert distance(A, N).item() == pytest.approx(R2)
    assert distance(A, N, squared=True).item() == pytest.approx(2.0)


def test_triplet_loss_eq5():
    assert triplet_loss(A, P, N, margin=1.0).item() == pytest.approx(1 - R2 + 1)
    assert triplet_loss(A, P, N, margin=0.3).item() == 0.0  # margin met: no loss
    assert triplet_loss(A, P, N, margin=1.5, squared=True).item() == pytest.approx(1 - 2 + 1.5)


def test_triplet_loss_anchor_swap_eq6():
    # the positive is nearer the negative (2 sin 15) than the anchor is (sqrt 2): swap uses that distance
    assert triplet_loss(A, P, N, margin=1.0, swap=True).item() == pytest.approx(1 - D_PN + 1)
    # swap never lowers the loss
    x = torch.nn.functional.normalize(torch.randn(3, 16, 8, dtype=torch.float64), dim=-1)
    assert (triplet_loss(*x, swap=True, reduction="none") >= triplet_loss(*x, reduction="none")).all()


def test_mask_triplet_loss_eq7():
    am, pm = unit(0)[None], unit(10)[None]  # masked descriptors 2 sin 5 apart
    expected = (2 * math.sin(math.radians(5)) - 0.1) + 0.5 * (1 - D_PN + 1)
    assert mask_triplet_loss(A, P, N, am, pm, margin=1.0, beta=0.1, lam=0.5).item() == pytest.approx(expected)
    # masked descriptors within beta of each other: only the (weighted) triplet part remains
    assert mask_triplet_loss(A, P, N, am, unit(3)[None], beta=0.1).item() == pytest.approx(0.5 * (2 - D_PN))


# batch (3 rows: anchor, strong, weak; 2 columns): col 0 = (e1, e1, e2), col 1 = (e1, e3, e4)
BATCH = torch.stack([torch.stack([e(0), e(0)]), torch.stack([e(0), e(2)]), torch.stack([e(1), e(3)])])


def test_hardest_negatives_come_from_other_columns():
    hn = hardest_negatives(BATCH)
    # a0 = e1 has a1 = e1 in the other column (0); w0 = e2 is orthogonal to all of column 1 (sqrt 2)
    assert hn[0, 0].item() == pytest.approx(0.0, abs=1e-5) and hn[2, 0].item() == pytest.approx(R2)
    # s1 = e3: column 0 is (e1, e1, e2), all orthogonal
    assert hn[1, 1].item() == pytest.approx(R2)


def test_batched_loss_eq8_by_hand():
    loss, terms = batched_loss(BATCH, options=LossOptions(use_masks=False))
    # col 0: D(a,s) = 0, D(a,w) = sqrt2, nearest negative 0 (a1 = a0)
    #   easy = [0 + 1 - 0] = 1, weak = [sqrt2 + 0.5 - 0], hard = [0 + 0.5 - sqrt2]_+ = 0
    # col 1: D(a,s) = D(a,w) = sqrt2, nearest negative 0
    #   easy = sqrt2 + 1, weak = sqrt2 + 0.5, hard = [sqrt2 + 0.5 - sqrt2] = 0.5
    easy, weak, hard = (1 + R2 + 1) / 2, R2 + 0.5, 0.25
    assert terms["easy"].item() == pytest.approx(easy)
    assert terms["weak"].item() == pytest.approx(weak)
    assert terms["hard"].item() == pytest.approx(hard)
    assert loss.item() == pytest.approx(easy + weak + hard)
    # lambda_1, lambda_2 weight the weak and hard terms
    loss2, _ = batched_loss(BATCH, options=LossOptions(use_masks=False, lambda_weak=0.5, lambda_hard=2.0))
    assert loss2.item() == pytest.approx(easy + 0.5 * weak + 2 * hard)


def test_batched_loss_margins():
    o = LossOptions(use_masks=False, margin_easy=0.2, margin_weak=0.1, margin_hard=2.0)
    _, terms = batched_loss(BATCH, options=o)
    assert terms["easy"].item() == pytest.approx((0.2 + R2 + 0.2) / 2)
    assert terms["weak"].item() == pytest.approx(R2 + 0.1)
    assert terms["hard"].item() == pytest.approx((2.0 - R2 + 2.0) / 2)


def test_batched_loss_anchor_swap():
    # col 0 = (e1, e2, e2), col 1 = (e3, e2', e4) with e2' near e2: only the positive s0 has a close negative
    near = torch.nn.functional.normalize(e(1) + 0.1 * e(3), dim=0)
    batch = torch.stack([torch.stack([e(0), e(2)]), torch.stack([e(1), near]), torch.stack([e(1), e(3)])])
    d = (e(1) - near).norm().item()
    _, no_swap = batched_loss(batch, options=LossOptions(use_masks=False, anchor_swap=False))
    _, swap = batched_loss(batch, options=LossOptions(use_masks=False, anchor_swap=True))
    # column 0: D(a,s) = sqrt2; nearest negative of a0 = e1 is sqrt2, of s0 = e2 is d
    easy0_no_swap, easy0_swap = R2 + 1 - R2, R2 + 1 - d
    easy1 = R2 + 1 - min(R2, d)  # a1 = e3 vs column 0 (sqrt2), s1 = near vs s0/w0 = e2 (d)
    assert no_swap["easy"].item() == pytest.approx((easy0_no_swap + (R2 + 1 - R2)) / 2)
    assert swap["easy"].item() == pytest.approx((easy0_swap + easy1) / 2)


def test_batched_loss_mask_term():
    am = torch.stack([unit(0, 4), e(0)])
    sm = torch.stack([unit(10, 4), e(1)])
    valid = torch.tensor([True, False])  # column 1's masks were empty: no mask term there
    loss, terms = batched_loss(BATCH, {"strong": (am, sm, valid)}, LossOptions())
    mask0 = 2 * math.sin(math.radians(5)) - 0.1
    easy = (0.5 * 1 + mask0 + 0.5 * (R2 + 1)) / 2
    weak = 0.5 * (R2 + 0.5)
    assert terms["mask"].item() == pytest.approx(mask0 / 2)
    assert terms["easy"].item() == pytest.approx(easy)
    assert terms["weak"].item() == pytest.approx(weak)
    assert loss.item() == pytest.approx(easy + weak + 0.25)


def test_batched_loss_matches_a_loop():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(3, 5, 16, dtype=torch.float64), dim=-1)
    loss, _ = batched_loss(x, options=LossOptions(use_masks=False))
    total = 0.0
    for i in range(5):
        negs = [x[r, j] for r in range(3) for j in range(5) if j != i]

        def n(u, v, negs=negs):
            return min(min((u - q).norm().item(), (v - q).norm().item()) for q in negs)

        das, daw = (x[0, i] - x[1, i]).norm().item(), (x[0, i] - x[2, i]).norm().item()
        total += max(0, das + 1 - n(x[0, i], x[1, i])) + max(0, daw + 0.5 - n(x[0, i], x[2, i]))
        total += max(0, das + 0.5 - daw)
    assert loss.item() == pytest.approx(total / 5)


def test_batched_loss_has_gradients_and_checks_shape():
    x = torch.nn.functional.normalize(torch.randn(3, 4, 8), dim=-1).requires_grad_()
    loss, _ = batched_loss(x)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError):
        batched_loss(x[:2])
    with pytest.raises(ValueError):
        batched_loss(x[:, :1])


def test_masked_descriptors_pool_only_inside_the_mask():
    fmap = torch.zeros(1, 2, 4, 4)
    fmap[0, 0, 0, 0] = 5.0  # channel 0 peaks outside the mask
    fmap[0, 1, 3, 3] = 1.0  # channel 1 inside
    fmap[0, 0, 3, 3] = 1.0
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 16:, 16:] = True  # the bottom-right quarter = feature cells (2..3, 2..3)
    cells = mask_to_map(mask, (4, 4))
    assert cells[0].sum() == 4 and cells[0, 3, 3] and not cells[0, 0, 0]
    desc, valid = masked_descriptors(fmap, mask)
    assert valid.item() and torch.allclose(desc[0], torch.tensor([1.0, 1.0]) / R2, atol=1e-5)
    _, valid = masked_descriptors(fmap, torch.zeros(1, 32, 32, dtype=torch.bool))
    assert not valid.item()


def test_batched_loss_mean_over_all_negatives():
    # BATCH column 0 = (e1, e1, e2), column 1 = (e1, e3, e4); negatives of column 0: e1, e3, e4
    _, terms = batched_loss(BATCH, options=LossOptions(use_masks=False, mining="all"))
    # col 0 easy: D(a,s) = 0, min(D(a,e), D(s,e)) = 0, sqrt2, sqrt2 -> hinges 1, 0, 0 -> 1/3
    # col 1 easy: D(a,s) = sqrt2; a1 = e1, s1 = e3 vs (e1, e1, e2): 0, 0, sqrt2 -> sqrt2+1, sqrt2+1, 1
    assert terms["easy"].item() == pytest.approx((1 / 3 + (2 * (R2 + 1) + 1) / 3) / 2)
    # col 0 weak: D(a,w) = sqrt2; a0 = e1, w0 = e2 vs (e1, e3, e4): 0, sqrt2, sqrt2 -> sqrt2+.5, .5, .5
    # col 1 weak: D(a,w) = sqrt2; a1 = e1, w1 = e4 vs (e1, e1, e2): 0, 0, sqrt2 -> sqrt2+.5, sqrt2+.5, .5
    assert terms["weak"].item() == pytest.approx(((R2 + 1.5) / 3 + (2 * R2 + 1.5) / 3) / 2)
