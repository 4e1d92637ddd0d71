import sys

from kubeforge.cli import main

sys.exit(main())
