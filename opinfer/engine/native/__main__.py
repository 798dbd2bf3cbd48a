import sys

from opinfer.engine.native import main

sys.exit(main())
