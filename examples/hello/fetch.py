"""Asks a URL N times on fresh connections and prints how many answers each host gave.

    python3 fetch.py [URL [N [TIMEOUT_SECONDS]]]      (defaults: 127.0.0.1:9302, 10, 5)

Used in the cluster demo from the client container (docker-compose.yml mounts it there):
    docker-compose exec client python3 /demo/fetch.py http://127.0.0.1:9302/ 20
"""

from __future__ import annotations

import collections
import sys
import urllib.request


def main(argv: list) -> int:
    url = argv[1] if len(argv) > 1 else "http://127.0.0.1:9302/"
    count = int(argv[2]) if len(argv) > 2 else 10
    timeout = float(argv[3]) if len(argv) > 3 else 5.0
    answers: collections.Counter = collections.Counter()
    failures = 0
    for _ in range(count):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                answers[response.read().decode().strip()] += 1
        except OSError as e:
            failures += 1
            print(f"failed: {e}", file=sys.stderr)
    for answer, n in sorted(answers.items()):
        print(f"{n:4d}  {answer}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
