"""LVIS metrics: :mod:`.metrics` scores detections with vernier (AP, APr, APc, APf for box
and mask, per-category AP); :mod:`.lvis_api` is the bridge to lvis-api (the oracle the
tests compare against, patched for NumPy >= 1.24)."""
