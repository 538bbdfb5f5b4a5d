"""Import N generated subscribers from CSV through the real command; print the time.

    python bench/import_csv.py --rows 100000 [--database-url postgresql+psycopg://...]

Run by hand; the result goes in docs/benchmarks.md (target: 100,000 rows under 30 s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    env = {
        **os.environ,
        "NEWSLETTER_DATABASE_URL": args.database_url or f"sqlite:///{tmp}/bench.db",
    }
    csv_path = tmp / "list.csv"
    zones = ["UTC", "Europe/Lisbon", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]
    tags = ["Politics", "Health", "Politics, Health", "Climate", "Climate, Public Services"]
    with csv_path.open("w", encoding="utf-8") as out:
        out.write("email,name,tags,cadence,timezone\n")
        for n in range(args.rows):
            cadence = ("immediate", "daily", "weekly")[n % 3]
            out.write(
                f'reader{n}@example.org,Reader {n},"{tags[n % 5]}",{cadence},{zones[n % 5]}\n'
            )
    newsletter = [sys.executable, "-m", "newsletter.cli"]
    subprocess.run([*newsletter, "db", "upgrade"], env=env, check=True, cwd=ROOT)
    subprocess.run(
        [*newsletter, "tags", "add", "Politics, Health, Climate, Public Services"],
        env=env,
        check=True,
        cwd=ROOT,
    )
    start = time.perf_counter()
    subprocess.run(
        [*newsletter, "subscribers", "import", str(csv_path)], env=env, check=True, cwd=ROOT
    )
    elapsed = time.perf_counter() - start
    print(f"imported {args.rows:,} rows in {elapsed:.1f} s ({args.rows / elapsed:,.0f} rows/s)")


if __name__ == "__main__":
    main()
