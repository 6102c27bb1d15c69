"""`python -m stages.lineage {file,metric,data,report} ...`: the lineage audit (see `report.py`)."""

import sys

from stages.lineage.report import main

sys.exit(main())
