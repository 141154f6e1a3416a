"""The detector: torchvision Mask R-CNN built from a :class:`~.detector.ModelSpec`
(:mod:`.detector`), box predictors (:mod:`.heads`), the long-tail RoI heads that call a
pluggable loss (:mod:`.roi_heads`), balanced RoI sampling (:mod:`.roi_sampling`),
detection selection (:mod:`.detections`) and LOCE's memory-augmented feature sampling
inside the detector (:mod:`.roi_mfs`)."""
