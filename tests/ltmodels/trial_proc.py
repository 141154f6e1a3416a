"""Helper of ``test_trial.py``: run one trial in its own process.

    python tests/ltmodels/trial_proc.py CONFIG_JSON WORKDIR RESULT_JSON

``CONFIG_JSON`` holds ``trial_config_to_dict(cfg)``. Logs at INFO to stderr (the tests look
for ``training stage 1`` and the feature-cache lines), writes the TrialResult as JSON.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch


def main() -> None:
    config, workdir, result = sys.argv[1:4]
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    # the cache reports reuse at debug level (one line per trial would flood a study)
    logging.getLogger("ltmodels.cache.build").setLevel(logging.DEBUG)
    from ltmodels.trial.config import trial_config_from_dict
    from ltmodels.trial.run import run_trial

    cfg = trial_config_from_dict(json.loads(Path(config).read_text()))
    res = run_trial(cfg, workdir=workdir)
    Path(result).write_text(json.dumps(res.to_dict()))


if __name__ == "__main__":
    main()
