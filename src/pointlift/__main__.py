import sys

from pointlift.cli import main

sys.exit(main())
