"""One rank of an extraction of the tiny pair in `argv[1]` (tracking store `argv[2]`, `argv[3]` devices, strategy
ddp), as `torchrun` starts it; writes `<run id> <store path> <tokens>` to `argv[4]/rank-<rank>.txt` (a file per rank,
not the shared stdout, so one rank's line cannot be lost or interleaved with the other's)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny_models import tiny_cfg  # noqa: E402

from diffgame.pipeline.planner import make_plan  # noqa: E402
from diffgame.preprocess import preprocess  # noqa: E402

root = Path(sys.argv[1])
data = {k: root / "data" / f"{k}.jsonl" for k in ("text", "chat", "organism")}
cfg = tiny_cfg(root / "base", root / "organism", data, Path(sys.argv[2]), devices=int(sys.argv[3]), strategy="ddp",
               dtype="float32")
result = preprocess(make_plan(cfg), shard_tokens=300)
line = f"{result.run_id} {result.store_path} {result.n_tokens}"
(Path(sys.argv[4]) / f"rank-{os.environ.get('RANK', '0')}.txt").write_text(line)
print("RESULT", os.environ.get("RANK", "-"), line, flush=True)
