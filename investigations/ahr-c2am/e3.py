import sys; sys.path.insert(0, "/tmp/anom")
from h import *
M = [
 ("c2am s30 a0.5", "c2am", {"s": 30.0, "alpha": 0.5}),
 ("c2am s30 a0.5 nobg", "c2am", {"s": 30.0, "alpha": 0.5, "background_margin": False}),
 ("ahr n6 lm2", "ahr", {"num_clusters": 6, "lambda_m": 2.0}),
]
pack(M, seeds=(1,))
save("/tmp/anom/e2.pkl")
