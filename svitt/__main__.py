import sys

from svitt.cli import main

sys.exit(main())
