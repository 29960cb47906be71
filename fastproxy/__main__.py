"""Allow `python -m fastproxy`."""
from fastproxy.cli import main

raise SystemExit(main())
