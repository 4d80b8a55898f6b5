import sys

from mobileast.cli import main

sys.exit(main())
