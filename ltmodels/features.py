"""RoI-feature cache for decoupled stage 2: build once per stage-1 checkpoint, reuse per trial.

When stage 2 trains only the box predictor, the frozen detector's box-head features of every
training RoI and validation proposal are computed once
(:func:`~ltmodels.feature_build.build_feature_cache`, stored by
:mod:`ltmodels.feature_cache`), so a trial costs predictor training on them
(:func:`~ltmodels.cached_stage2.train_predictor_cached`) plus box decoding, NMS and LVIS
evaluation (:func:`~ltmodels.cached_eval.predict_cached`,
:func:`~ltmodels.cached_eval.evaluate_cached`), several trials' predictors per read of the
validation features.

Typical use (one stage-1 checkpoint, many stage-2 trials)::

    cache = build_feature_cache(model, train_set, val_set, cache_dir, key=stage1_hash)
    for trial in trials:
        predictor, loss = trial.predictor(), trial.loss()
        train_predictor_cached(predictor, loss, cache, epochs=12, lr=0.02, batch_images=16,
                               warmup_iters=500, seed=trial.seed)
    results = evaluate_cached([(t.predictor, t.loss) for t in trials], cache, val_json)
"""

from __future__ import annotations

from ltmodels.cached_eval import evaluate_cached, grouped_nms, predict_cached
from ltmodels.cached_stage2 import train_predictor_cached
from ltmodels.feature_build import build_feature_cache
from ltmodels.feature_cache import CacheError, FeatureCache
from ltmodels.roi_sampling import sample_balanced

__all__ = [
    "CacheError",
    "FeatureCache",
    "build_feature_cache",
    "evaluate_cached",
    "grouped_nms",
    "predict_cached",
    "sample_balanced",
    "train_predictor_cached",
]
