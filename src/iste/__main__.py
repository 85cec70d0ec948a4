import sys

from iste.cli.main import main

sys.exit(main())
