import sys; sys.path.insert(0, "/tmp/anom")
from h import *
M = [
 ("ce", "ce", {}),
 ("bce", "bce", {}),
 ("c2am s30 a0.5", "c2am", {"s": 30.0, "alpha": 0.5}),
 ("c2am s30 a0", "c2am", {"s": 30.0, "alpha": 0.0}),
 ("c2am s30 a0.5 init", "c2am", {"s": 30.0, "alpha": 0.5}, "stage1"),
 ("c2am s30 a0 init", "c2am", {"s": 30.0, "alpha": 0.0}, "stage1"),
 ("ahr n6 lm2", "ahr", {"num_clusters": 6, "lambda_m": 2.0}),
 ("ahr n6 lm0 l0", "ahr", {"num_clusters": 6, "lambda_m": 0.0, "lambda_": 0.0}),
 ("ahr n6 lm0 l0 noeql", "ahr", {"num_clusters": 6, "lambda_m": 0.0, "lambda_": 0.0, "eql": False}),
 ("ahr n6 lm2 init", "ahr", {"num_clusters": 6, "lambda_m": 2.0}, "stage1"),
]
pack(M)
save("/tmp/anom/e1.pkl")
