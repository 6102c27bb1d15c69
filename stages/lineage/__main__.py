"""`python -m stages.lineage {file,metric,data} ...`: the lineage audit (see `audit.py`)."""

import sys

from stages.lineage.audit import main

sys.exit(main())
