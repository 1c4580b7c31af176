import sys

from imagekit.cli import main

sys.exit(main())
