import sys

from gzsq.cli import main

sys.exit(main())
