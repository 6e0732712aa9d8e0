"""Result writers for `vitgender classify`: streamed jsonl/csv/json, atomic when writing a file."""

from __future__ import annotations

import csv
import json
from enum import Enum
from typing import IO

from vitgender.scoring import UNCERTAIN


class OutputFormat(str, Enum):
    jsonl = "jsonl"
    csv = "csv"
    json = "json"
    parquet = "parquet"  # classify --ray only (sharded)


class ResultWriter:
    """Streams result records in the chosen format, flushing after each one."""

    CSV_COLUMNS = ("image", "face", "box", "rank", "label", "score", "uncertain", "error")

    def __init__(self, fmt: OutputFormat, handle: IO[str]) -> None:
        self.fmt, self.handle, self.count = fmt, handle, 0
        if fmt is OutputFormat.csv:
            self.csv = csv.writer(handle)
            self.csv.writerow(self.CSV_COLUMNS)
        elif fmt is OutputFormat.json:
            handle.write("[")

    def write(self, record: dict) -> None:
        if self.fmt is OutputFormat.jsonl:
            self.handle.write(json.dumps(record) + "\n")
        elif self.fmt is OutputFormat.json:
            self.handle.write(("," if self.count else "") + "\n  " + json.dumps(record))
        else:
            self._write_csv(record)
        self.count += 1
        self.handle.flush()

    def _write_csv(self, record: dict) -> None:
        """One row per label (per face in face-first mode); every input gets at least one row."""
        if "error" in record:
            self.csv.writerow([record["image"], "", "", "", "", "", "", record["error"]])
            return
        if record.get("faces") == []:  # face-first mode found no face: say so rather than drop the image
            self.csv.writerow([record["image"], "none", "", "", "", "", "", ""])
            return
        groups = (
            [(i, " ".join(map(str, f["box"])), f) for i, f in enumerate(record["faces"])]
            if "faces" in record
            else [("", "", record)]
        )
        for face, box, item in groups:
            for rank, prediction in enumerate(item["predictions"], 1):
                uncertain = "true" if item["predictions"][0]["label"] == UNCERTAIN else ""
                self.csv.writerow(
                    [record["image"], face, box, rank, prediction["label"], f"{prediction['score']:.6f}", uncertain, ""]
                )

    def close(self) -> None:
        if self.fmt is OutputFormat.json:
            self.handle.write("\n]\n" if self.count else "]\n")
