"""The Python API leaves library logging alone: only the CLI hides transformers' / DeepSpeed's chatter
(mmzoo/quiet.py). Run in a fresh interpreter so that nothing another test did is seen."""
from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = r"""
import json, logging, os, sys, warnings
def state():
    return {"env": {k: os.environ.get(k) for k in ("TRANSFORMERS_VERBOSITY", "TQDM_DISABLE", "TRANSFORMERS_NO_ADVISORY_WARNINGS", "PYTHONWARNINGS")},
            "filters": [repr(f) for f in warnings.filters],
            "deepspeed_filters": [type(f).__name__ for f in logging.getLogger("DeepSpeed").filters],
            "root_level": logging.getLogger().level}
before = state()
import mmzoo
mmzoo.inspect(sys.argv[1])
mmzoo.convert(sys.argv[1], sys.argv[2], tgt_fmt="internal")
mmzoo.load_processor(sys.argv[2])
after = state()
from mmzoo.quiet import quiet_libraries
quiet_libraries()
print(json.dumps({"before": before, "after": after, "quieted": state()}))
"""


def test_the_api_changes_no_logging_state_and_quiet_libraries_is_opt_in(tiny, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRANSFORMERS_VERBOSITY", "TQDM_DISABLE", "TRANSFORMERS_NO_ADVISORY_WARNINGS", "PYTHONWARNINGS", "MMZOO_DEBUG")}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tiny.hf()), str(tmp_path / "internal")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["after"]["env"] == seen["before"]["env"] == dict.fromkeys(seen["before"]["env"])
    assert seen["after"]["deepspeed_filters"] == seen["before"]["deepspeed_filters"]
    assert seen["after"]["root_level"] == seen["before"]["root_level"]
    assert seen["quieted"]["env"]["TRANSFORMERS_VERBOSITY"] == "error" and "_DropNoise" in seen["quieted"]["deepspeed_filters"]
