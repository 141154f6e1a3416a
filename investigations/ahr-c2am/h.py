"""Harness: one cached quickstart trial (same TrialConfig as ltsearch's trial_config)."""
import json, sys, time, logging
from pathlib import Path
import torch
sys.path.insert(0, "/work/main")
from ltmodels.trial.config import DataConfig, StageConfig, TrialConfig
from ltmodels.trial.pack import run_pack

ROOT = "/tmp/ci5/runs/_cache"
DS = ROOT + "/datasets/synthetic/14e2bfb02a51"
DATA = DataConfig(train_json=DS + "/lvis_synth_train.json", val_json=DS + "/lvis_synth_val.json",
                  train_root=DS, val_root=DS)
STAGE1 = StageConfig(loss="ce", loss_params={}, epochs=3, lr=0.02, batch_size=4, warmup_iters=100)

def cfg(loss, params=None, seed=0, **s2):
    kw = dict(epochs=8, lr=0.01, batch_size=8, warmup_iters=20)
    kw.update(s2)
    train = StageConfig(loss=loss, loss_params=dict(params or {}), finetune=("box_predictor",),
                        use_feature_cache=True, seed=seed, **kw)
    return TrialConfig(data=DATA, train=train, stage1=STAGE1,
                       model={"backbone": "tiny", "masks": True}, schedule="decoupled",
                       seed=seed, eval_masks=True, device="cpu", cache_dir=ROOT, full_eval=False)

def run(loss, params=None, seeds=(0, 1), tag="", **s2):
    """Runs seeds as one pack per seed; returns list of (metrics, result)."""
    out = []
    for sd in seeds:
        t0 = time.time()
        [r] = run_pack([cfg(loss, params, sd, **s2)])
        m = r.metrics
        out.append(r)
        print(f"{tag or loss} {params} seed={sd} APr={100*m['bbox/APr']:.1f} APc={100*m['bbox/APc']:.1f} "
              f"APf={100*m['bbox/APf']:.1f} AP={100*m['bbox/AP']:.1f} ({time.time()-t0:.0f}s)", flush=True)
    return out

# ---- packs: several configurations of one seed on one pass over the cache ----
import ltmodels.trial.pack as _pack
from ltmodels.cache.train import PackTimes
from ltmodels.engine.checkpoint import load_checkpoint
_orig_stage2 = _pack.stage2_model
MODELS = []
INIT_QUEUE = []  # per member in order: None or "stage1" (copy stage-1 classifier into cosine weight)

def _stage2(cfg_, spec, train_set, weights, device):
    model = _orig_stage2(cfg_, spec, train_set, weights, device)
    mode = INIT_QUEUE.pop(0) if INIT_QUEUE else None
    MODELS.append(model)
    if mode:
        state = load_checkpoint(weights, restore_rng=False)["model"]
        w1 = state["roi_heads.box_predictor.cls_score.weight"].to(device).float()  # [C+1, D]
        p = model.roi_heads.box_predictor
        with torch.no_grad():
            if p.weight.shape[0] == w1.shape[0]:
                p.weight.copy_(w1)
            else:  # sigmoid layout: C foreground rows
                p.weight.copy_(w1[1:])
    return model
_pack.stage2_model = _stage2

RESULTS = []

def pack(members, seeds=(0, 1), **s2):
    """members: list of (tag, loss, params[, init]). Prints one line per member and seed."""
    for sd in seeds:
        INIT_QUEUE.clear(); MODELS.clear()
        INIT_QUEUE.extend([m[3] if len(m) > 3 else None for m in members])
        t0 = time.time()
        times = PackTimes()
        res = run_pack([cfg(m[1], m[2], sd, **s2) for m in members], times=times)
        for m, r in zip(members, res):
            if isinstance(r, Exception):
                print(f"{m[0]} seed={sd} FAILED {r!r}", flush=True); continue
            mt = r.metrics
            RESULTS.append({"tag": m[0], "loss": m[1], "params": m[2], "seed": sd, **s2,
                            "APr": mt["bbox/APr"], "APc": mt["bbox/APc"], "APf": mt["bbox/APf"],
                            "AP": mt["bbox/AP"], "cats": r.categories, "hist": r.epochs,
                            "state": {k: v.detach().clone() for k, v in MODELS[members.index(m)].roi_heads.box_predictor.state_dict().items()}})
            print(f"{m[0]:28s} seed={sd} APr={100*mt['bbox/APr']:5.1f} APc={100*mt['bbox/APc']:5.1f} "
                  f"APf={100*mt['bbox/APf']:5.1f} AP={100*mt['bbox/AP']:5.1f}", flush=True)
        print(f"  [pack of {len(members)} seed {sd}: {time.time()-t0:.0f}s; sample {times.sample:.0f}s read {times.read:.0f}s step {[round(x) for x in times.step]}]", flush=True)

def save(path):
    import pickle
    pickle.dump(RESULTS, open(path, "wb"))
