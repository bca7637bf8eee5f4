"""Latency the service stack adds over the engine alone; see kvfleet/cli/bench_gateway.py.

Usage: python scripts/bench_gateway_latency.py [MODEL] [MAX_TOKENS] [ITERATIONS]
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvfleet.cli.bench_gateway import measure  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    out = measure(model=args[0] if args else "tiny-llama",
                  max_tokens=int(args[1]) if len(args) > 1 else 32,
                  iterations=int(args[2]) if len(args) > 2 else 20)
    print(json.dumps(out, indent=2))
