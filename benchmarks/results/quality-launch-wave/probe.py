"""Probe (2026-12-04, issue 26): would a launch-wave validation -- the statistics of a random share (0.3, 0.5) of
the validation split's items hidden, as if launched at once -- choose better among the default's candidates (the
auto new-item rate, 0.5 and their soup) than validation as it is? Each candidate is scored on validation as is,
under both waves, and on test. Usage, after `genrec bench quality` has imported the data into WORKDIR:

    python benchmarks/results/quality-launch-wave/probe.py WORKDIR DATASET SEED >> runs.jsonl

DATASET: ml-100k, ml-100k-new or synthetic (its test split is dev/). The default training is run as is
(`genrec train` with no flags); its searched fits are read where it builds the soup."""
import copy
import dataclasses
import json
import sys

import numpy as np
import torch

import genrec.train as T
from genrec.checkpoint import Checkpoint
from genrec.config import EvalConfig, ModelConfig, TrainConfig
from genrec.evaluate import evaluate
from genrec.metrics import ranking_metrics
from genrec.scoring import encode_items, score_impressions

workdir, ds, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
root = f"{workdir}/data/{ds}"
test_dir = root + ("/dev" if ds == "synthetic" else "/test")
out = f"{workdir}/wave/{ds}-s{seed}"
captured = {}
orig = T.soup_of
def spy(fits):
    captured["fits"] = list(fits)
    return orig(fits)
T.soup_of = spy
res = T.train(root + "/train", out, ModelConfig(), TrainConfig(seed=seed), progress=False, log=lambda s: None)
fits = captured["fits"]
cands = {f"rate {f.stats_dropout:.3f}": f.state for f in fits}
cands["soup"] = orig(fits)
ckpt = Checkpoint.load(res.checkpoint_path)
data = T.load_data(root + "/train", ModelConfig(), TrainConfig(seed=seed), log=lambda s: None)
rng = np.random.default_rng(123)
waves = {}
for r in (0.3, 0.5):
    hidden = rng.random(len(data.table)) < r
    va = copy.copy(data.val)
    va.candidate_stats = [np.where(hidden[c][:, None], 0.0, st).astype(st.dtype)
                          for c, st in zip(va.candidates, va.candidate_stats)]
    waves[r] = va
rows = {}
for name, state in cands.items():
    ck = dataclasses.replace(ckpt, state_dict=state)
    model = ck.build_model()
    model.eval()
    with torch.no_grad():
        vecs, _ = encode_items(model, ck.tokenizer(), data.table.texts)
        row = {}
        for tag, imps in (("val", data.val), *((f"val_wave{r}", w) for r, w in waves.items())):
            s = score_impressions(model, vecs, data.table, imps)["click_logit"]
            row[tag] = ranking_metrics(zip(imps.labels, s)).group_auc
    ev = evaluate(ck, test_dir, EvalConfig())
    row["test"] = ev["group_auc"]
    row["test_pairs"] = {k: v["group_auc"] for k, v in ev["new_items"]["model"].items()}
    rows[name] = row
print(json.dumps({"dataset": ds, "seed": seed, "chosen": res.metrics["stats_dropout"], "soup": res.metrics["soup"],
                  "rows": rows}), flush=True)
