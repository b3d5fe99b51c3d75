"""Maintainers' tool: pack the paper's released tables into rayfp/evaluate/published/paper-data.zip.

    python scripts/pack_paper_data.py PAPER_DATA_DIR

PAPER_DATA_DIR is a copy of the released data (IMSY-DKFZ/task-fingerprinting, commit 064ddd8, MIT):
exp/, distances/, the task CSVs and auto_augmentations/. The zip keeps every CSV byte for byte
(the evaluation parses them exactly as the paper did) and the 213 policies as one JSON-lines
member; LZMA brings 25 MB down to about 2 MB. Run it again only if the release changes."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "rayfp" / "evaluate" / "published" / "paper-data.zip"
TABLES = ("task_infos.csv", "advanced_task_infos.csv", "model_infos.csv")


def main(root: Path) -> None:
    members: list[tuple[str, bytes]] = [(name, (root / name).read_bytes()) for name in TABLES]
    for folder in ("exp", "distances"):
        members += [(f"{folder}/{p.name}", p.read_bytes())
                    for p in sorted((root / folder).glob("*.csv"))]
    lines = []
    for policy in sorted((root / "auto_augmentations").glob("*/AA/*/policy_0001.json")):
        search_dir, _, task_dir = policy.parts[-4:-1]
        lines.append(json.dumps({"search": search_dir, "folder": task_dir,
                                 "policy": policy.read_text()}))
    members.append(("policies.jsonl", ("\n".join(lines) + "\n").encode()))
    with zipfile.ZipFile(OUT, "w", zipfile.ZIP_LZMA) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 12, 11, 0, 0, 0))  # reproducible bytes
            info.compress_type = zipfile.ZIP_LZMA
            archive.writestr(info, data)
    print(f"{OUT}: {len(members)} members, {len(lines)} policies, {OUT.stat().st_size:,} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
