import sys; sys.path.insert(0, "/tmp/anom")
from h import *
M = [
 ("ahr n6 lm2 lr0.125", "ahr", {"num_clusters": 6, "lambda_m": 2.0, "lambda_r": 0.125}),
 ("ahr n6 lm2 lr0.125 init", "ahr", {"num_clusters": 6, "lambda_m": 2.0, "lambda_r": 0.125}, "stage1"),
 ("ahr n6 lm0 l0 lr0.125", "ahr", {"num_clusters": 6, "lambda_m": 0.0, "lambda_": 0.0, "lambda_r": 0.125}),
]
pack(M)
save("/tmp/anom/e4.pkl")
