import sys; sys.path.insert(0, "/tmp/anom")
from h import *
M = [
 ("c2am s30 a0.5", "c2am", {"s": 30.0, "alpha": 0.5}),
 ("c2am s30 a0.5 nobg", "c2am", {"s": 30.0, "alpha": 0.5, "background_margin": False}),
 ("c2am s30 a0.2", "c2am", {"s": 30.0, "alpha": 0.2}),
 ("c2am s8.7 a0", "c2am", {"s": 8.665, "alpha": 0.0}),
 ("ahr n6 lm2", "ahr", {"num_clusters": 6, "lambda_m": 2.0}),
 ("ahr n6 lm2 lc10", "ahr", {"num_clusters": 6, "lambda_m": 2.0, "lambda_c": 10.0, "lambda_p": 10.0}),
]
pack(M)
save("/tmp/anom/e2.pkl")
