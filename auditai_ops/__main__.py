"""`python -m auditai_ops` is `auditai`."""

import sys

from auditai_ops.cli.main import main

sys.exit(main())
