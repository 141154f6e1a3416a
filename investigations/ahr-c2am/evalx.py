"""Re-evaluate stored predictors with other inference settings; score statistics."""
import sys, pickle, json
sys.path.insert(0, "/work/main")
import numpy as np, torch
from ltmodels.cache.store import FeatureCache
from ltmodels.cache.evaluate import evaluate_cached, classifier_logits
from ltmodels.modeling.heads import CosinePredictor, LinearPredictor
from ltmodels.losses import build_loss

CACHE = "/tmp/ci5/runs/_cache/features/04f3918abdd37588"
VAL = "/tmp/ci5/runs/_cache/datasets/synthetic/14e2bfb02a51/lvis_synth_val.json"

def predictor(rec):
    loss = build_loss(rec["loss"], num_classes=40, **rec["params"])
    st = rec["state"]
    if "weight" in st:
        p = CosinePredictor(128, st["weight"].shape[0], scale=None, num_classes=40)
    else:
        p = LinearPredictor(128, st["cls_score.weight"].shape[0], num_classes=40)
    p.load_state_dict(st); p.eval()
    return p, loss

def evaluate(recs, **kw):
    cache = FeatureCache.open(CACHE, full=False)
    pairs = [predictor(r) for r in recs]
    with torch.no_grad():
        return evaluate_cached(pairs, cache, VAL, **kw)
