import sys

from e3lib.cli import main

sys.exit(main())
