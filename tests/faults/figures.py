"""The last run's figures as the table in docs/RELIABILITY.md.

python -m tests.faults.figures    (after a run of the fault suite)
"""

from __future__ import annotations

import json

from tests.faults.conftest import FIGURES


def table(figures: dict[str, dict[str, object]]) -> str:
    lines = [
        "| Case | Readers | Faults dealt | Sent | Failed, with reason | Extra copies | Lost "
        "| Settled after (s) | Within 2 min | Note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, f in sorted(figures.items()):
        lines.append(
            f"| `{case}` | {f['readers']} | {f['faults']} | {f['sent']} | {f['failed']} "
            f"| {f['duplicates']} | {f['lost']} | {f['recovery_s']} "
            f"| {'yes' if f['within_target'] else '**no**'} | {f['note']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(json.loads(FIGURES.read_text())))
