import sys, pickle, math, json
sys.path.insert(0, "/tmp/anom")
import numpy as np, torch
from evalx import *
R = pickle.load(open("/tmp/anom/e2.pkl", "rb"))
cats = json.load(open(VAL))["categories"]
freq = np.array(["bg"] + [c["frequency"] for c in sorted(cats, key=lambda c: c["id"])])
def by(tag, seed):
    return next(r for r in R if r["tag"] == tag and r["seed"] == seed)
# ---- C2AM weight norms and margins ----
for seed in (1,):
    for tag in ("c2am s30 a0.5", "c2am s30 a0.5 nobg"):
        r = by(tag, seed)
        n = r["state"]["weight"].norm(dim=1).numpy()
        g = {k: n[freq == k].mean() for k in ("bg", "f", "c", "r")}
        print(f"{tag} seed {seed}: |W| mean bg {g['bg']:.2f} f {g['f']:.2f} c {g['c']:.2f} r {g['r']:.2f} (init ~{0.01*math.sqrt(128):.3f})")
        a = r["params"].get("alpha", 0.5)
        if a:
            m = np.maximum(0, a / math.pi * (np.log(n)[:, None] - np.log(n)[None, :]))
            def mm(i, j): return m[np.ix_(freq == i, freq == j)].mean()
            print(f"   mean margin (rad) row=RoI class, col=other: bg->f {mm('bg','f'):.3f} bg->c {mm('bg','c'):.3f} bg->r {mm('bg','r'):.3f} "
                  f"f->c {mm('f','c'):.3f} f->r {mm('f','r'):.3f} c->r {mm('c','r'):.3f} f->bg {mm('f','bg'):.3f} max {m.max():.3f}")

# ---- where do the true classes of rare/common/frequent GTs rank in their image? ----
from torchvision.ops import box_iou
cache = FeatureCache.open(CACHE, full=False)
val = json.load(open(VAL))
cat2label = {c: i for i, c in enumerate(cache.label_to_cat_id) if i > 0}
gts = {}
for a in val["annotations"]:
    x, y, w, h = a["bbox"]
    gts.setdefault(a["image_id"], []).append((x, y, x + w, y + h, cat2label[a["category_id"]]))
V = cache.val
def rank_stats(p, loss):
    out = {"r": [], "c": [], "f": []}
    ids = np.asarray(V["image_ids"]); off = V["offsets"]
    for k, iid in enumerate(ids):
        a, b = int(off[k]), int(off[k + 1])
        x = torch.from_numpy(np.asarray(V["features"][a:b], dtype=np.float32))
        with torch.no_grad():
            sc = loss.scores(p.classify(x))  # [n, C]
        props = torch.from_numpy(np.asarray(V["boxes"][a:b], dtype=np.float32))
        ih, iw = [float(v) for v in V["input_size"][k]]; oh, ow = [float(v) for v in V["orig_size"][k]]
        props = props * torch.tensor([ow / iw, oh / ih, ow / iw, oh / ih])
        flat = sc.flatten().sort(descending=True).values
        for g in gts.get(int(iid), []):
            iou = box_iou(torch.tensor([g[:4]]), props)[0]
            hit = iou >= 0.5
            if not hit.any():
                continue
            best = sc[hit, g[4] - 1].max()
            rank = int((flat > best).sum())
            out[freq[g[4]]].append((float(best), rank))
    return out
for seed in (1,):
    for tag in ("c2am s30 a0.5", "c2am s30 a0.5 nobg", "ahr n6 lm2"):
        try:
            r = by(tag, seed)
        except StopIteration:
            continue
        p, loss = predictor(r)
        st = rank_stats(p, loss)
        for g in ("f", "c", "r"):
            v = np.array(st[g])
            print(f"{tag} seed {seed} [{g}] GTs {len(v)}: median best true-class score {np.median(v[:,0]):.3g}, "
                  f"median rank in image {np.median(v[:,1]):.0f}, share rank>=300 {np.mean(v[:,1]>=300):.2f}, >=2000 {np.mean(v[:,1]>=2000):.2f}")

# ---- AHR / C2AM re-evaluated with looser inference caps ----
for tag in ("ahr n6 lm2", "c2am s30 a0.5"):
    try:
        r = by(tag, 1)
    except StopIteration:
        continue
    for kw in ({}, {"topk_candidates": None, "score_thresh": 0.0}):
        [(m, _)] = evaluate([r], **kw)
        print(f"{tag} seed 1 eval {kw or 'default (thresh 1e-4, topk 2000, 300/img)'}: APr {100*m['bbox/APr']:.1f} APc {100*m['bbox/APc']:.1f} APf {100*m['bbox/APf']:.1f}")
