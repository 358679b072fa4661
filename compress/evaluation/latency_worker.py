"""Benchmark worker process: loads one model, then times it on request (see `latency._ProcessWorker`)."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from compress.errors import CompressError
    from compress.evaluation.latency import _LocalWorker

    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the protocol
    job = json.loads(sys.stdin.readline())
    try:
        worker = _LocalWorker(job["source"], job["device"], job["threads"], job["load_kwargs"])
        out.write(json.dumps({"result": worker.info}) + "\n")
    except CompressError as e:
        out.write(json.dumps({"error": e.problem, "fix": e.fix}) + "\n")
        return
    out.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "quit":
            return
        result = getattr(worker, msg["op"])(*msg["args"])
        out.write(json.dumps({"result": result}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
