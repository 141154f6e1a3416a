"""Hand computation (plain Python loops over the paper's equations) vs the implementations."""
import math, sys
sys.path.insert(0, "/work/main")
import torch
from ltmodels.losses.c2am import C2AMLoss
from ltmodels.losses.ahr import AHRLoss

torch.manual_seed(0)
# ---------------- C2AM Eq. 5-7 ----------------
K, D = 4, 5  # background + 3 classes
W = torch.randn(K, D, dtype=torch.float64) * torch.tensor([3.0, 2.0, 0.5, 1.0])[:, None]
X = torch.randn(6, D, dtype=torch.float64)
labels = torch.tensor([0, 1, 2, 3, 1, 0])
cosm = torch.nn.functional.normalize(X, dim=1) @ torch.nn.functional.normalize(W, dim=1).T
def c2am_hand(s, alpha):
    norms = [math.sqrt(sum(float(v) ** 2 for v in W[k])) for k in range(K)]
    tot = 0.0
    for n in range(len(labels)):
        i = int(labels[n])
        num = math.exp(s * float(cosm[n, i]))
        den = num
        for j in range(K):
            if j == i:
                continue
            m = max(0.0, alpha / math.pi * math.log(norms[i] / norms[j]))
            th = math.acos(float(cosm[n, j]))
            den += math.exp(s * math.cos(min(th + m, math.pi)))
        tot += -math.log(num / den)
    return tot / len(labels)
for s, a in [(30.0, 0.5), (8.0, 2.0), (30.0, 0.0)]:
    got = float(C2AMLoss(num_classes=K - 1, s=s, alpha=a)(cosm, labels, weight=W)["loss_cls"])
    print(f"C2AM s={s} alpha={a}: impl {got:.10f} hand {c2am_hand(s, a):.10f}")

# ---------------- AHR Eq. 3-13 ----------------
C, n = 5, 2
Wc = torch.randn(C, D, dtype=torch.float64)
Xa = torch.randn(5, D, dtype=torch.float64)
lab = torch.tensor([0, 1, 3, 5, 2])  # 0 background, j -> column j-1
cos_a = torch.nn.functional.normalize(Xa, dim=1) @ torch.nn.functional.normalize(Wc, dim=1).T
cluster = [0, 0, 1, 1, 0]
freq = [0.5, 0.001, 0.2, 0.0005, 0.3]  # classes 1 and 3 (0-based) are tail
def ahr_hand(lm, lam, lc=20.0, lp=20.0, eql=True):
    wn = [[float(v) for v in torch.nn.functional.normalize(Wc[k], dim=0)] for k in range(C)]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    sig = lambda z: 1 / (1 + math.exp(-z))
    fine = coarse = 0.0
    for r in range(len(lab)):
        y = int(lab[r]) - 1  # -1 = background
        for j in range(C):
            M = 0.0
            if y >= 0 and j != y and cluster[j] == cluster[y]:
                M = lm * max(0.0, dot(wn[y], wn[j]))
            z = lc * float(cos_a[r, j]) + M
            if j == y:
                fine += -math.log(sig(z))
            else:
                w = 1.0
                if eql and y >= 0 and freq[j] < 1.76e-3:
                    w = 0.0  # EQL: 1 - E(r) T(f_j)
                fine += -w * math.log(1 - sig(z))
        for p in range(n):
            members = [k for k in range(C) if cluster[k] == p]
            wp = [sum(wn[k][d] for k in members) / len(members) for d in range(D)]  # Eq. 3
            xr = [float(v) for v in Xa[r]]
            cp = dot(xr, wp) / math.sqrt(dot(xr, xr)) / math.sqrt(dot(wp, wp))  # Eq. 6
            t = 1.0 if (y >= 0 and cluster[y] == p) else 0.0
            zp = lp * cp
            coarse += -(t * math.log(sig(zp)) + (1 - t) * math.log(1 - sig(zp)))
    N = len(lab)
    return fine / N, lam * coarse / N
loss = AHRLoss(num_classes=C, num_clusters=n, lambda_m=2.0)
loss.cluster.copy_(torch.tensor(cluster)); loss.fitted.fill_(True)
loss.image_freq.copy_(torch.tensor(freq, dtype=torch.float32))
for lm, lam, eql in [(2.0, 1.0, True), (4.0, 0.5, True), (2.0, 1.0, False)]:
    loss.lambda_m, loss.lambda_, loss.eql = lm, lam, eql
    out = loss(cos_a, lab, weight=Wc)
    print(f"AHR lm={lm} lambda={lam} eql={eql}: impl fine {float(out['loss_fine']):.10f} coarse {float(out['loss_coarse']):.10f}"
          f" | hand {ahr_hand(lm, lam, eql=eql)}")
