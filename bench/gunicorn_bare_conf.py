"""gunicorn settings for the bare baseline: caselink's gunicorn.conf.py numbers, none of its hooks.

The repo's gunicorn.conf.py is executed and every plain setting it defines
(bind, workers, worker_class, threads, keepalive, timeouts, …) is copied here,
so the two targets always run with the same numbers, whatever that file says
today. Its hooks (preflight, the delivery worker, metrics) are left out.
"""

import runpy
import types
from pathlib import Path

_CASELINK_CONF = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"

for _name, _value in runpy.run_path(str(_CASELINK_CONF)).items():
    if _name.startswith("_") or callable(_value) or isinstance(_value, types.ModuleType):
        continue
    globals()[_name] = _value
