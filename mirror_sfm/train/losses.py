"""Triplet losses of MIRorR (sec. 4, eqs. 5-8) on L2-normalised global descriptors.

Distance: D(x, y) = ||x - y||_2, the Euclidean distance between L2-normalised descriptors (in [0, 2]);
`squared=True` uses ||x - y||^2 instead. [z]_+ = max(z, 0). Every function returns per-item losses or
their mean, and the batched loss also its terms, so the training log can show each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossOptions:
    """Margins and weights of the batched mask triplet loss (defaults: the paper's values)."""

    margin_easy: float = 1.0  # alpha of anchor-strong vs the batch's negatives
    margin_weak: float = 0.5  # alpha of anchor-weak vs the batch's negatives
    margin_hard: float = 0.5  # alpha of anchor-strong vs anchor-weak (strong ranks above weak)
    lambda_weak: float = 1.0  # lambda_1 of eq. 8
    lambda_hard: float = 1.0  # lambda_2 of eq. 8
    use_masks: bool = True  # eq. 7 (mask term) instead of eq. 6 for anchor-positive pairs
    mask_pairs: tuple[str, ...] = ("strong",)  # which pairs get the mask term: strong and/or weak
    beta: float = 0.1  # eq. 7: masked-descriptor distance tolerated for free
    mask_lambda: float = 0.5  # eq. 7: lambda, weight of the triplet part when the mask term is on
    anchor_swap: bool = True  # eq. 6: nearest negative of the anchor *or* of the positive
    mining: str = "hardest"  # hardest: the nearest in-batch negative; all: mean hinge over every negative
    squared: bool = False  # squared Euclidean distance instead of the plain one
    margin_same: float = 0.5  # alpha of anchor-strong vs the same-scene negative (row 3, when the batch has one)
    lambda_same: float = 1.0  # weight of that term


def distance(x: torch.Tensor, y: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise distance of (..., D) tensors -> (...). The sqrt is floored at `eps` (finite gradient at 0)."""
    d2 = (x - y).pow(2).sum(dim=-1)
    return d2 if squared else d2.clamp_min(eps).sqrt()


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """(N, D), (M, D) -> (N, M) matrix of D(x_i, y_j) (exact differences; batches are small)."""
    return distance(x[:, None, :], y[None, :, :], squared)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def triplet_loss(
    a: torch.Tensor,
    p: torch.Tensor,
    n: torch.Tensor,
    margin: float = 1.0,
    swap: bool = False,
    squared: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Eq. 5: L = [D(a, p) - D(a, n) + alpha]_+ ; with `swap` (eq. 6): L = [D(a, p) - min(D(a, n), D(p, n)) + alpha]_+.

    a, p, n: (B, D) descriptors of anchors, positives and negatives.
    """
    neg = distance(a, n, squared)
    if swap:
        neg = torch.minimum(neg, distance(p, n, squared))
    return _reduce((distance(a, p, squared) - neg + margin).clamp_min(0), reduction)


def mask_triplet_loss(
    a: torch.Tensor,
    p: torch.Tensor,
    n: torch.Tensor,
    a_masked: torch.Tensor,
    p_masked: torch.Tensor,
    margin: float = 1.0,
    beta: float = 0.1,
    lam: float = 0.5,
    squared: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Eq. 7: L = [D*_+ - beta]_+ + lambda [D_+ + alpha - min(D_-, D'_-)]_+

    D*_+ = D(a_masked, p_masked): the anchor's and the positive's descriptors MAC-pooled only over the cells
    each shares with the other (`mirror_sfm.pooling.masked_mac`, then L2); D_+ = D(a, p); D_- = D(a, n);
    D'_- = D(p, n).
    """
    mask_term = (distance(a_masked, p_masked, squared) - beta).clamp_min(0)
    trip = triplet_loss(a, p, n, margin, swap=True, squared=squared, reduction="none")
    return _reduce(mask_term + lam * trip, reduction)


def hardest_negatives(desc: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """desc (R, N, D), column c = one scene -> (R, N): each image's distance to its nearest image in another column."""
    r, n, d = desc.shape
    flat = desc.reshape(r * n, d)
    dist = pairwise_distance(flat, flat, squared)
    col = torch.arange(n, device=desc.device).repeat(r)
    same = col[:, None] == col[None, :]
    return dist.masked_fill(same, float("inf")).amin(dim=1).reshape(r, n)


def _mean_hinge(
    desc: torch.Tensor, row_x: int, row_y: int, d_pos: torch.Tensor, margin: float, o: LossOptions
) -> torch.Tensor:
    """(N,): per column i, the mean over the 3(N-1) images e of other columns of
    [D(x_i, y_i) + alpha - min(D(x_i, e), D(y_i, e))]_+ (only D(x_i, e) without anchor swap)."""
    r, n, d = desc.shape
    flat = desc.reshape(r * n, d)
    dist = pairwise_distance(desc[row_x], flat, o.squared)
    if o.anchor_swap:
        dist = torch.minimum(dist, pairwise_distance(desc[row_y], flat, o.squared))
    other = torch.arange(n, device=desc.device)[:, None] != torch.arange(n, device=desc.device).repeat(r)[None, :]
    hinge = (d_pos[:, None] + margin - dist).clamp_min(0) * other.to(desc.dtype)
    return hinge.sum(dim=1) / other.sum(dim=1)


def batched_loss(
    desc: torch.Tensor,
    masked: dict | None = None,
    options: LossOptions | None = None,
    negative_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 8 on a (3, N, D) batch: row 0 anchors a_i, row 1 strong positives s_i, row 2 weak positives w_i;
    every column is another scene, so any image of column j != i is a negative of column i.

    A (4, N, D) batch adds row 3: n_i, an image of column i's own scene that shares no surface with a_i (the
    in-batch negatives above are other scenes, already far apart; this one is the hard case retrieval meets).
    It is an in-batch negative of the other columns too, and adds, where `negative_valid` (N,) is True,

        L_same_i = [D(a_i, s_i) + alpha_s - min(D(a_i, n_i), D(s_i, n_i))]_+     (alpha_s = `margin_same`)

    to the loss with weight `lambda_same` (averaged over all N columns; the anchor swap as in eq. 6).

        L = L_easy + lambda_1 L_weak + lambda_2 L_hard, averaged over the N columns, with

        n(x_i, y_i) = min over images e of the other columns of min(D(x_i, e), D(y_i, e))   (hardest in-batch
                      negative with anchor swap, eq. 6; without `anchor_swap` only D(x_i, e))
        (`mining="all"` replaces [D + alpha - n]_+ by its mean over every such e, a gentler variant)
        L_easy_i = v^s_i [D(a*_i, s*_i) - beta]_+ + lambda [D(a_i, s_i) + alpha_e - n(a_i, s_i)]_+     (alpha_e = 1)
        L_weak_i = v^w_i [D(a*_i, w*_i) - beta]_+ + lambda [D(a_i, w_i) + alpha_w - n(a_i, w_i)]_+     (alpha_w = 0.5)
        L_hard_i = [D(a_i, s_i) + alpha_h - D(a_i, w_i)]_+                                        (alpha_h = 0.5)

    so negatives stay alpha_e beyond strong positives and alpha_w beyond weak ones, and strong positives rank
    alpha_h ahead of weak ones (the paper's "hard" triplet: the weak positive plays the negative). The mask
    term (eq. 7) is used where `masked` gives the pair's masked descriptors: `masked = {"strong": (a*, s*,
    valid), "weak": (a*, w*, valid)}`, (N, D) each, valid (N,) bool, with v_i = valid_i (both masks
    non-empty at feature-map size); lambda = `mask_lambda` (0.5) then, and 1 with `use_masks` off (eq. 6).

    Returns (loss, terms): terms "easy", "weak", "hard" (each already averaged, unweighted), "mask" (the
    mask parts of easy + weak), with row 3 "same" (L_same averaged, unweighted) and "d_same" (mean D(a, n) over
    the columns with a negative), and for monitoring "d_pos" (mean D(a, s)), "d_neg" (mean n(a, s)) and
    "rank_ok" (share of columns with D(a, s) < n(a, s)); all detached. Collapse (every descriptor alike)
    shows as d_pos and d_neg near 0 with the loss stuck near alpha_e lambda + alpha_w lambda + alpha_h.
    """
    o = options or LossOptions()
    if desc.dim() != 3 or desc.shape[0] not in (3, 4):
        raise ValueError(f"expected a (3, N, D) or (4, N, D) batch, got {tuple(desc.shape)}")
    if desc.shape[1] < 2:
        raise ValueError("the batched loss needs at least 2 columns (negatives come from the other columns)")
    a, s, w = desc[0], desc[1], desc[2]
    hn = hardest_negatives(desc, o.squared)
    use_masks = o.use_masks and masked is not None
    lam = o.mask_lambda if use_masks else 1.0

    def neg(row_x: int, row_y: int) -> torch.Tensor:
        return torch.minimum(hn[row_x], hn[row_y]) if o.anchor_swap else hn[row_x]

    d_as, d_aw = distance(a, s, o.squared), distance(a, w, o.squared)
    if o.mining == "hardest":
        easy = lam * (d_as + o.margin_easy - neg(0, 1)).clamp_min(0)
        weak = lam * (d_aw + o.margin_weak - neg(0, 2)).clamp_min(0)
    elif o.mining == "all":
        easy = lam * _mean_hinge(desc, 0, 1, d_as, o.margin_easy, o)
        weak = lam * _mean_hinge(desc, 0, 2, d_aw, o.margin_weak, o)
    else:
        raise ValueError(f"unknown mining {o.mining!r}: hardest | all")
    hard = (d_as + o.margin_hard - d_aw).clamp_min(0)
    mask_parts = torch.zeros_like(easy)
    if use_masks:
        for key, target in (("strong", "easy"), ("weak", "weak")):
            if key not in masked or key not in o.mask_pairs:
                continue
            xa, xp, valid = masked[key]
            term = (distance(xa, xp, o.squared) - o.beta).clamp_min(0) * valid.to(desc.dtype)
            mask_parts = mask_parts + term
            if target == "easy":
                easy = easy + term
            else:
                weak = weak + term
    easy_m, weak_m, hard_m = easy.mean(), weak.mean(), hard.mean()
    loss = easy_m + o.lambda_weak * weak_m + o.lambda_hard * hard_m
    extra = {}
    if desc.shape[0] == 4:
        n_same = desc[3]
        d_an = distance(a, n_same, o.squared)
        d_n = torch.minimum(d_an, distance(s, n_same, o.squared)) if o.anchor_swap else d_an
        valid = negative_valid.to(desc.device, desc.dtype) if negative_valid is not None else torch.ones_like(d_an)
        same = (d_as + o.margin_same - d_n).clamp_min(0) * valid
        same_m = same.mean()
        loss = loss + o.lambda_same * same_m
        count = valid.sum().clamp_min(1)
        extra = {
            "same": same_m.detach(),
            "d_same": ((d_an * valid).sum() / count).detach(),  # mean D(a, n) over columns with a negative
        }
    n_as = neg(0, 1)
    terms = {
        "easy": easy_m.detach(),
        "weak": weak_m.detach(),
        "hard": hard_m.detach(),
        "mask": mask_parts.mean().detach(),
        # monitoring: mean D(a, s), mean nearest-negative distance, share of columns ranked right
        "d_pos": d_as.mean().detach(),
        "d_neg": n_as.mean().detach(),
        "rank_ok": (d_as < n_as).to(desc.dtype).mean().detach(),
        **extra,
    }
    return loss, terms


def mask_to_map(mask: torch.Tensor, size: tuple[int, int], min_fraction: float = 0.5) -> torch.Tensor:
    """(B, H, W) pixel masks -> (B, h, w) bool on the feature-map grid: a cell is on when at least
    `min_fraction` of its pixels are (0: any pixel)."""
    frac = torch.nn.functional.adaptive_avg_pool2d(mask[:, None].float(), size)[:, 0]
    return frac > 0 if min_fraction <= 0 else frac >= min_fraction


def masked_descriptors(
    fmap: torch.Tensor, mask: torch.Tensor, min_fraction: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised MAC of `fmap` (B, C, h, w) over `mask` (B, H, W) and whether the mask kept any cell (B,)."""
    from ..pooling import l2n, masked_mac

    cells = mask_to_map(mask, tuple(fmap.shape[-2:]), min_fraction)
    return l2n(masked_mac(fmap, cells)), cells.flatten(1).any(dim=1)
