"""Benchmark worker process: loads one model, then times it on request (see `latency._ProcessWorker`)."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from compress.evaluation.latency.workers import local_worker

    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the protocol
    job = json.loads(sys.stdin.readline())
    try:
        worker = local_worker(job["source"], job["device"], job["threads"], job["load_kwargs"], isolated=True,
                              loop=job.get("loop", "runner"))
        out.write(json.dumps({"result": worker.info}) + "\n")
    except Exception as e:  # noqa: BLE001  (any failure goes back to the parent as one line)
        out.write(json.dumps(_error(e, job["source"])) + "\n")
        out.flush()
        return
    out.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "quit":
            return
        try:
            reply = {"result": getattr(worker, msg["op"])(*msg["args"])}
        except Exception as e:  # noqa: BLE001
            reply = _error(e, job["source"])
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if "error" in reply:
            return


def _error(e: Exception, source: str) -> dict:
    """A failure as the parent re-raises it: CompressError's problem and fix, else the exception in one line."""
    from compress.core.errors import CompressError

    if isinstance(e, CompressError):
        return {"error": e.problem, "fix": e.fix}
    first = (str(e).strip().splitlines() or [""])[0]
    return {"error": f"timing '{source}' failed ({type(e).__name__}: {first})",
            "fix": "check that the model runs: compress eval it, or bench with --no-isolate"}


if __name__ == "__main__":
    main()
