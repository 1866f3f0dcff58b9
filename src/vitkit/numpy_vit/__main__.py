"""``python -m vitkit.numpy_vit``: the same as ``vitkit scratch``; a bad config is one line and exit code 2."""

import sys

from vitkit.errors import VitkitError

from .runner import main

try:
    code = main()
except VitkitError as e:
    print(f"vitkit scratch: error: {e}", file=sys.stderr)
    code = 2
except KeyboardInterrupt:
    print("vitkit scratch: interrupted", file=sys.stderr)
    code = 130
sys.exit(code)
