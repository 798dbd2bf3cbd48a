import sys

from opinfer.native import main

sys.exit(main())
