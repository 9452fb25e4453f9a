"""Model behaviour on hand-built inputs: cold users, masking, explanations, engineered features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from genrec.config import ModelConfig
from genrec.core.contract import ITEM_STATS
from genrec.core.stats import CTR_POPULARITY_WEIGHT
from genrec.core.vocab import Vocab
from genrec.model import FEATURE_NAMES, RAW_CTR, RecommenderHeads

D = 16
S = len(ITEM_STATS)


@pytest.fixture()
def heads() -> RecommenderHeads:
    torch.manual_seed(0)
    h = RecommenderHeads(ModelConfig(dim=D, n_categories=5, n_subcategories=7, attention_hidden=8))
    h.set_stats_transform(0.7, 0.9, torch.rand(200, S, generator=torch.Generator().manual_seed(3)) * 20)
    torch.nn.init.normal_(h.feature_mlp[-1].weight, std=0.3)   # starts at zero (baseline_init); trained, it is not
    torch.nn.init.constant_(h.match_scale, 0.8)                 # starts at zero (match_init); trained, it is not
    return h.eval()


def _inputs(b=2, h=4, c=3):
    """hist_vec, hist_mask, hist_cat, hist_sub, cand_vec, cand_cat, cand_sub, hist_stats, cand_stats"""
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, h, D, generator=g), torch.ones(b, h, dtype=torch.bool),
            torch.randint(1, 5, (b, h), generator=g),
            torch.randint(1, 7, (b, h), generator=g), torch.randn(b, c, D, generator=g),
            torch.randint(1, 5, (b, c), generator=g), torch.randint(1, 7, (b, c), generator=g),
            torch.randint(0, 30, (b, h, S), generator=g).float(), torch.randint(0, 30, (b, c, S), generator=g).float())


def _no_history(x):
    hv, hm, hc, hs, cv, cc, cs, hst, cst = x
    return hv[:, :0], hm[:, :0], hc[:, :0], hs[:, :0], cv, cc, cs, hst[:, :0], cst


def test_the_start_is_exactly_the_baseline():
    """baseline_init + match_init 0: before training, the click logit is the ctr_popularity baseline as a logit
    (an affine function of smoothed CTR + 0.05 log(1 + popularity), the same ranking), whatever the history."""
    torch.manual_seed(0)
    h = RecommenderHeads(ModelConfig(dim=D, n_categories=5, n_subcategories=7, attention_hidden=8))
    h.set_stats_transform(0.7, 0.9, torch.rand(200, S, generator=torch.Generator().manual_seed(3)) * 20)
    h.eval()
    x = _inputs(c=6)
    logit = h(*x)["click_logit"]
    base, _known = h.baseline_logit(x[-1])
    assert torch.allclose(logit, h.cfg.baseline_init * base, atol=1e-5)
    cst = x[-1].double()
    clicks, shown = cst[..., 1], cst[..., 0]
    ctr_pop = (clicks + 0.7) / (shown + 1.6) + CTR_POPULARITY_WEIGHT * torch.log1p(clicks + cst[..., 2])
    order = torch.sign(ctr_pop[..., :, None] - ctr_pop[..., None, :])        # every pair ordered the same way
    assert (torch.sign(logit[..., :, None] - logit[..., None, :]).double() == order).all()
    assert h(*_no_history(x))["click_logit"].allclose(logit, atol=1e-5)      # the history plays no part yet


def test_overlap_init_starts_new_items_ranked_by_category_overlap():
    """ModelConfig.overlap_init: at the start, candidates without statistics (new items) differ only by the
    weight times their category overlap (share of the history in their category); at 0 (the default) they all
    tie. Known items keep the ctr_popularity part."""
    cfg = dict(dim=D, n_categories=5, n_subcategories=7, attention_hidden=8)
    sample = torch.rand(200, S, generator=torch.Generator().manual_seed(3)) * 20
    hv, hm, hc, hs, cv, cc, cs, hst, cst = _inputs(b=1, h=4, c=4)
    hc[:] = torch.tensor([[1, 1, 1, 2]])                          # history: 3 of 4 items in category 1, 1 in 2
    cc[:] = torch.tensor([[1, 2, 3, 1]])                          # overlaps 0.75, 0.25, 0, 0.75
    cst[:, :3] = 0.0                                              # the first three candidates are new items
    logits = {}
    for w in (0.0, 0.6):
        torch.manual_seed(0)
        h = RecommenderHeads(ModelConfig(**cfg, overlap_init=w))
        h.set_stats_transform(0.7, 0.9, sample)
        logits[w] = h.eval()(hv, hm, hc, hs, cv, cc, cs, hst, cst)["click_logit"][0]
    new0, new6 = logits[0.0][:3], logits[0.6][:3]
    assert torch.allclose(new0, new0[0].expand(3), atol=1e-6)                     # at 0: new items tie
    torch.testing.assert_close(new6 - new6[2], 0.6 * torch.tensor([0.75, 0.25, 0.0]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[0.6][3] - logits[0.0][3], torch.tensor(0.6 * 0.75), atol=1e-5, rtol=1e-4)


def test_cold_user_gets_finite_scores(heads):
    x = _inputs()
    out = heads(*_no_history(x))                                               # H = 0
    assert out["click_logit"].shape == (2, 3) and torch.isfinite(out["click_logit"]).all()
    assert out["explanation"].shape == (2, 3, 0)
    feats, _ = heads.features(*_no_history(x))
    assert torch.isfinite(feats).all()


def test_masked_history_is_ignored(heads):
    hv, hm, hc, hs, cv, cc, cs, hst, cst = _inputs()
    base = heads(hv, hm, hc, hs, cv, cc, cs, hst, cst)
    # append 3 padded slots with random content: outputs must not move
    pad = torch.randn(2, 3, D)
    hv2 = torch.cat([hv, pad], 1)
    hm2 = torch.cat([hm, torch.zeros(2, 3, dtype=torch.bool)], 1)
    ones = torch.ones(2, 3, dtype=torch.long)
    hc2, hs2 = torch.cat([hc, ones], 1), torch.cat([hs, ones], 1)
    hst2 = torch.cat([hst, torch.full((2, 3, S), 99.0)], 1)
    out = heads(hv2, hm2, hc2, hs2, cv, cc, cs, hst2, cst)
    torch.testing.assert_close(out["click_logit"], base["click_logit"])
    assert out["explanation"][..., 4:].abs().max() < 1e-6
    # a fully masked history behaves exactly like an empty one
    cold = heads(*_no_history((hv, hm, hc, hs, cv, cc, cs, hst, cst)))
    masked = heads(hv, torch.zeros_like(hm), hc, hs, cv, cc, cs, hst, cst)
    torch.testing.assert_close(masked["click_logit"], cold["click_logit"])


def test_explanation_is_the_exact_leave_one_out_drop(heads):
    hv, hm, hc, hs, cv, cc, cs, hst, cst = _inputs(h=5)
    hm[1, 3:] = False                                        # second user: 3 real history items
    out = heads(hv, hm, hc, hs, cv, cc, cs, hst, cst)
    checked = 0
    for b in range(2):
        for h in range(5):
            if not hm[b, h]:
                continue
            without = hm.clone()
            without[b, h] = False                            # rescore with item h removed from the history
            drop = out["click_logit"][b] - heads(hv, without, hc, hs, cv, cc, cs, hst, cst)["click_logit"][b]
            torch.testing.assert_close(out["explanation"][b, :, h], drop, atol=1e-5, rtol=1e-4)
            checked += 1
    assert checked == 8 and out["explanation"].abs().max() > 1e-3      # not trivially zero


def test_item_statistics_move_scores_and_unknown_items_get_the_prior(heads):
    hv, hm, hc, hs, cv, cc, cs, hst, cst = _inputs()
    base = heads(hv, hm, hc, hs, cv, cc, cs, hst, cst)["click_logit"]
    more = cst.clone()
    more[..., 1] += 25.0                                     # more clicks for the same exposures
    assert not torch.allclose(heads(hv, hm, hc, hs, cv, cc, cs, hst, more)["click_logit"], base)
    feats, _ = heads.features(hv, hm, hc, hs, cv, cc, cs, hst, torch.zeros_like(cst))
    col = {n: feats[..., i] for i, n in enumerate(FEATURE_NAMES)}
    assert (col["item_known"] == 0).all()
    # zero counts -> CTR = prior mean, standardized with the fitted transform
    prior_ctr = (0.7 / (0.7 + 0.9) - heads.stats_mean[2]) / heads.stats_std[2]
    torch.testing.assert_close(col["item_ctr"], torch.full_like(col["item_ctr"], float(prior_ctr)))
    # the ablation switch makes the model blind to statistics
    blind = RecommenderHeads(ModelConfig(dim=D, n_categories=5, n_subcategories=7, attention_hidden=8,
                                         item_stats=False))
    blind.load_state_dict(heads.state_dict())
    blind.eval()
    torch.testing.assert_close(blind(hv, hm, hc, hs, cv, cc, cs, hst, more)["click_logit"],
                               blind(hv, hm, hc, hs, cv, cc, cs, hst, cst)["click_logit"])


def test_baseline_init_starts_the_feature_term_at_the_ctr_popularity_baseline():
    """Before any training the features' part of the click logit ranks exactly like `genrec evaluate`'s
    ctr_popularity baseline, baseline_init logits per standard deviation of CTR; 0 = the random start."""
    cfg = ModelConfig(dim=D, n_categories=5, n_subcategories=7, attention_hidden=8, baseline_init=2.0)
    sample = torch.rand(200, S, generator=torch.Generator().manual_seed(3)) * 20
    torch.manual_seed(0)
    h = RecommenderHeads(cfg)
    h.set_stats_transform(0.7, 0.9, sample)
    hv, hm, hc, hs, cv, cc, cs, hst, cst = _inputs(c=6)
    cst[..., :3] = torch.rand(2, 6, 3, generator=torch.Generator().manual_seed(4)) * 30
    feats, _ = h.features(hv, hm, hc, hs, cv, cc, cs, hst, cst)
    term = h.feature_term(feats)                                              # (B, C)
    exposures, clicks, history_users = cst[..., 0], cst[..., 1], cst[..., 2]
    baseline = (clicks + 0.7) / (exposures + 1.6) + CTR_POPULARITY_WEIGHT * torch.log1p(clicks + history_users)
    expected = 2.0 * baseline / h.stats_std[RAW_CTR]
    centered = lambda x: x - x.mean(-1, keepdim=True)                        # noqa: E731  (the same ranking)
    torch.testing.assert_close(centered(term), centered(expected), atol=1e-5, rtol=1e-4)
    assert (h.feature_mlp(feats) == 0).all()
    torch.manual_seed(0)
    off = RecommenderHeads(ModelConfig(dim=D, n_categories=5, n_subcategories=7, attention_hidden=8,
                                       baseline_init=0.0))
    off.set_stats_transform(0.7, 0.9, sample)
    assert (off.wide.weight == 0).all() and off.feature_mlp(feats).abs().sum() > 0


def test_engineered_features_hand_example(heads):
    # one user, history: two items of category 1 (sub 2), one of category 3 (sub 4); one padded slot
    hv = torch.tensor([[[1.0, 0], [1.0, 0], [0, 1.0], [5.0, 5.0]]])
    hm = torch.tensor([[True, True, True, False]])
    hc, hs = torch.tensor([[1, 1, 3, 1]]), torch.tensor([[2, 2, 4, 2]])
    cv = torch.tensor([[[1.0, 0], [0, 1.0], [-1.0, 0]]])
    cc, cs = torch.tensor([[1, 3, 0]]), torch.tensor([[2, 9, 0]])
    # counts, then collaborative vectors (2 of the CF_DIM numbers used): history items 0 and 1 have one
    cf = lambda counts, vecs: torch.cat([torch.tensor(counts), F.pad(torch.tensor(vecs), (0, S - 5))], -1)[None]  # noqa: E731
    hst = cf([[10.0, 5, 0], [0, 0, 3], [0, 0, 0], [99, 99, 99]], [[2.0, 0], [0, -3.0], [0, 0], [7, 7]])
    cst = cf([[4.0, 1, 2], [0, 0, 0], [1, 1, 0]], [[1.0, 0], [1.0, -1.0], [0, 0]])
    full, loo = heads.features(hv, hm, hc, hs, cv, cc, cs, hst, cst, leave_one_out=True)
    col = {n: full[0, :, i].tolist() for i, n in enumerate(FEATURE_NAMES)}
    assert col["max_similarity"] == pytest.approx([1.0, 1.0, 0.0])
    assert col["mean_similarity"] == pytest.approx([2 / 3, 1 / 3, -2 / 3])
    assert col["category_overlap"] == pytest.approx([2 / 3, 1 / 3, 0.0])          # OOV never overlaps
    assert col["subcategory_overlap"] == pytest.approx([2 / 3, 0.0, 0.0])
    assert col["log_history_length"] == pytest.approx([math.log1p(3) / math.log1p(50)] * 3)
    assert col["cold_user"] == [0.0, 0.0, 0.0]
    assert col["item_known"] == [1.0, 0.0, 1.0]
    m, sd = heads.stats_mean.tolist(), heads.stats_std.tolist()
    pop = [(math.log1p(c + h) - m[1]) / sd[1] for c, h in ((1, 2), (0, 0), (1, 0))]
    assert col["item_log_popularity"] == pytest.approx(pop, rel=1e-5)
    hist_pop = sum((math.log1p(c + h) - m[1]) / sd[1] for c, h in ((5, 0), (0, 3), (0, 0))) / 3
    assert col["popularity_vs_history"] == pytest.approx([p - hist_pop for p in pop], rel=1e-5, abs=1e-6)
    # collaborative: cosines with the history items that have a vector (0 and 1), none for candidate 2
    assert col["cf_known"] == [1.0, 1.0, 0.0]
    assert col["cf_max_similarity"] == pytest.approx([1.0, 0.5 ** 0.5, 0.0], abs=1e-6)
    assert col["cf_mean_similarity"] == pytest.approx([0.5, 0.5 ** 0.5, 0.0], abs=1e-6)
    # leave-one-out features equal the features recomputed without that history item
    for h in range(3):
        keep = hm.clone()
        keep[0, h] = False
        ref, _ = heads.features(hv, keep, hc, hs, cv, cc, cs, hst, cst)
        torch.testing.assert_close(loo[0, :, h], ref[0], atol=1e-6, rtol=1e-5)


def test_vocab_oov_bucket():
    v = Vocab.build(["Sports", "news", "sports", ""])
    assert v.tokens == ["<oov>", "news", "sports"]
    assert v.lookup(["sports", " NEWS ", "weather", ""]).tolist() == [2, 1, 0, 0]
    assert Vocab.from_list(v.to_list()) == v


def test_fine_tuned_rows_run_length_sorted_and_equal_the_full_width_encoder():
    """Training runs the fine-tuned top layer over cached rows in length-sorted chunks cut to their own longest
    text (3-8x less work on short titles); vectors and gradients equal running all max_length positions."""
    import json

    from genrec.core.text import TextTokenizer
    from genrec.model import ItemEncoder
    from genrec.scoring import encode_lower
    from genrec.train import load_pretrained_lm, minilm_dir

    torch.manual_seed(0)
    lm_dir = minilm_dir()
    enc = ItemEncoder(ModelConfig(finetune_layers=1, dim=16), json.loads((lm_dir / "config.json").read_text()))
    load_pretrained_lm(enc)
    tok = TextTokenizer((lm_dir / "tokenizer.json").read_text(), max_length=32)
    texts = ["Heat (1995)", "The Adventures of Priscilla, Queen of the Desert (1994)", "Up", "Toy Story (1995)",
             "a much longer title that goes on " * 3, "Fargo (1996)"]
    cache, mask, _ = encode_lower(enc, tok, texts)
    assert cache.shape[1] == 32 and int(mask.sum(1).max()) < 32           # padded cache, shorter texts
    enc.lm.eval()
    rows = torch.tensor([5, 0, 4, 2, 0, 1])                                 # any order, repeats allowed
    full = enc.upper(cache[rows].float(), mask[rows])
    full.square().sum().backward()
    want = [p.grad.clone() for p in enc.parameters() if p.requires_grad]
    enc.zero_grad()
    packed = enc.upper_rows(cache, mask, rows, batch_size=2)                # 3 chunks of different widths
    packed.square().sum().backward()
    got = [p.grad for p in enc.parameters() if p.requires_grad]
    assert torch.allclose(packed, full, atol=1e-5)
    assert all(torch.allclose(g, w, atol=1e-4, rtol=1e-3) for g, w in zip(got, want))
