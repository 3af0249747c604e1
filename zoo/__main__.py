import sys

from zoo.cli import main   # light: torch, Pyro and the models load inside main(), which answers Ctrl-C

sys.exit(main())
