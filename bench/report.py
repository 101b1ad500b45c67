"""What every benchmark does last: write its JSON next to the table it printed."""
from __future__ import annotations

import json
from pathlib import Path


def write_json(path, info: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {path}")
