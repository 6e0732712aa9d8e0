"""Sharded result files that are either whole or absent, and the resume rule that reads them.

`classify --ray` writes its rows here, one shard per `rows_per_shard` results. A shard is
written under a temporary name (`_tmp-…`) and renamed to `part-<run>-<n>.<ext>` once complete,
so a reader never sees half a shard, and an interrupted run leaves only whole shards (its
temporary file is deleted by the next run). Resume rule: an input counts as done when a
committed shard holds a row whose `image` is that input's path, spelled as it was listed;
everything else is classified again. Any filesystem pyarrow understands works (local paths,
`file://`, `s3://`, `gs://`, `hdfs://`); on object stores the final name appears in one PUT.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

FORMATS = ("parquet", "jsonl")
COMMITTED_PREFIX, TEMP_PREFIX = "part-", "_tmp-"


def _schema():
    import pyarrow as pa

    ranked = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
    face = pa.struct([("box", pa.list_(pa.int64())), ("detector_score", pa.float64()), ("predictions", ranked)])
    return pa.schema(
        [("image", pa.string()), ("predictions", ranked), ("faces", pa.list_(face)), ("error", pa.string())]
    )


def filesystem(output: str | Path):
    """(pyarrow filesystem, root path inside it) for a local path or a URI."""
    from pyarrow import fs

    text = str(output)
    if "://" in text:
        return fs.FileSystem.from_uri(text)
    return fs.LocalFileSystem(), str(Path(text).resolve())


class ShardSink:
    """Accepts result rows (`Result.to_dict()` shape) and commits them in whole shards."""

    def __init__(self, output: str | Path, fmt: str = "parquet", rows_per_shard: int = 10_000) -> None:
        if fmt not in FORMATS:
            from vitgender.errors import UsageError

            raise UsageError(fmt, f"output format for sharded results must be one of {', '.join(FORMATS)}")
        self.fs, self.root = filesystem(output)
        self.fmt, self.rows_per_shard = fmt, max(1, rows_per_shard)
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.pending: list[dict] = []
        self.shards = 0
        self.rows = 0

    def _files(self) -> list:
        from pyarrow import fs

        info = self.fs.get_file_info(self.root)
        if info.type == fs.FileType.NotFound:
            return []
        return [f for f in self.fs.get_file_info(fs.FileSelector(self.root)) if f.type == fs.FileType.File]

    def committed(self) -> list[str]:
        return sorted(
            f.path
            for f in self._files()
            if f.base_name.startswith(COMMITTED_PREFIX) and f.base_name.rsplit(".", 1)[-1] in FORMATS
        )

    def discard_interrupted(self) -> int:
        """Delete temporary shards an interrupted run left behind; returns how many."""
        stale = [f.path for f in self._files() if f.base_name.startswith(TEMP_PREFIX)]
        for path in stale:
            self.fs.delete_file(path)
        return len(stale)

    def done_images(self) -> set[str]:
        """Every `image` in a committed shard (either format): the inputs a resumed run skips."""
        import pyarrow.parquet as pq

        done: set[str] = set()
        for path in self.committed():
            if path.endswith(".parquet"):
                done.update(pq.read_table(path, columns=["image"], filesystem=self.fs).column("image").to_pylist())
            else:
                with self.fs.open_input_stream(path) as handle:
                    done.update(json.loads(line)["image"] for line in handle.read().decode().splitlines() if line)
        return done

    def add(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.pending.append(row)
            if len(self.pending) >= self.rows_per_shard:
                self.commit()

    def commit(self) -> None:
        """Write the pending rows as one shard: a temporary name first, then the final name."""
        if not self.pending:
            return
        self.fs.create_dir(self.root, recursive=True)
        name = f"{self.run}-{self.shards:05d}.{self.fmt}"
        temp, final = f"{self.root}/{TEMP_PREFIX}{name}", f"{self.root}/{COMMITTED_PREFIX}{name}"
        with self.fs.open_output_stream(temp) as handle:
            handle.write(self._encode(self.pending))
        self.fs.move(temp, final)
        self.rows += len(self.pending)
        self.shards += 1
        self.pending = []

    def _encode(self, rows: list[dict]) -> bytes:
        if self.fmt == "jsonl":
            return "".join(json.dumps(row) + "\n" for row in rows).encode()
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), buffer)
        return buffer.getvalue()


def read_results(output: str | Path) -> list[dict]:
    """Every committed row, as `classify` prints them (keys with no value are left out)."""
    import pyarrow.parquet as pq

    sink = ShardSink(output)
    rows: list[dict] = []
    for path in sink.committed():
        if path.endswith(".parquet"):
            table = pq.read_table(path, filesystem=sink.fs)
            rows.extend({k: v for k, v in row.items() if v is not None} for row in table.to_pylist())
        else:
            with sink.fs.open_input_stream(path) as handle:
                rows.extend(json.loads(line) for line in handle.read().decode().splitlines() if line)
    return rows
