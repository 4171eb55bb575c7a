"""A tiny stand-in model server honouring the container contract, for platform tests.

Same command line as ``streamhost container`` (``--port --host --dialect --model-dir``), a real
process with real sockets: ``GET /ping`` (503 while "loading", then 200), ``POST /invocations``
(TGI-shaped body; SSE when ``stream`` is true, or jsonlines in the lmi dialect), SIGTERM drains.
The body's ``parameters`` steer it: ``max_new_tokens``, ``status`` (answer that HTTP error),
``crash_after`` (exit the process after that many tokens), ``delay`` (seconds per token).

Environment: ``STUB_STARTUP_DELAY`` seconds before /ping says ready, ``STUB_FAIL_ON_START``
(print it and exit 3), ``STUB_NAME`` (echoed in answers), ``STUB_TOKEN_DELAY``.
``GET /stats`` reports requests served, streams aborted by the client, and what it was given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

STATE = {"served": 0, "aborted": 0, "completed_streams": 0, "started": time.monotonic()}


def make_app(args: argparse.Namespace) -> Starlette:
    startup_delay = float(os.environ.get("STUB_STARTUP_DELAY", "0"))
    name = os.environ.get("STUB_NAME", f"port{args.port}")
    token_delay = float(os.environ.get("STUB_TOKEN_DELAY", "0.01"))

    async def ping(_: Request) -> Response:
        ready = time.monotonic() - STATE["started"] >= startup_delay
        return Response(status_code=200 if ready else 503)

    async def stats(_: Request) -> Response:
        return JSONResponse(
            {
                **{k: v for k, v in STATE.items() if k != "started"},
                "name": name,
                "pid": os.getpid(),
                "dialect": args.dialect,
                "model_dir": args.model_dir,
                "model_files": sorted(os.listdir(args.model_dir)) if args.model_dir else [],
                "env": {
                    k: os.environ.get(k) for k in ("HF_MODEL_ID", "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "STUB_NAME")
                },
            }
        )

    async def invocations(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return JSONResponse({"error": "Failed to parse the request body as JSON", "error_type": "validation"}, 400)
        params = body.get("parameters") or {}
        if "status" in params:
            return JSONResponse(
                {"error": f"stub error {params['status']}", "error_type": "validation"}, params["status"]
            )
        count = int(params.get("max_new_tokens", 8))
        delay = float(params.get("delay", token_delay))
        crash_after = params.get("crash_after")
        custom = request.headers.get("x-amzn-sagemaker-custom-attributes", "")
        headers = {"X-Amzn-SageMaker-Custom-Attributes": f"echo={custom}"} if custom else {}
        texts = [f"t{i} " for i in range(count)]
        STATE["served"] += 1
        if not body.get("stream"):
            await asyncio.sleep(delay * count)
            if crash_after is not None:
                os._exit(1)
            answer = {
                "generated_text": "".join(texts),
                "instance": name,
                "custom_attributes": custom,
                "accept": request.headers.get("accept"),
                "content_type": request.headers.get("content-type"),
            }
            return JSONResponse([answer], headers=headers)

        async def events():
            done = False
            try:
                for i, text in enumerate(texts):
                    if crash_after is not None and i == int(crash_after):
                        os._exit(1)
                    await asyncio.sleep(delay)
                    last = i == count - 1
                    if args.dialect == "lmi":
                        yield json.dumps({"token": {"id": i, "text": text}, "generated_text": None}) + "\n"
                        continue
                    event = {
                        "token": {"id": i, "text": text, "logprob": -0.1, "special": False},
                        "generated_text": "".join(texts) if last else None,
                        "details": None,
                        "instance": name,
                    }
                    yield "data:" + json.dumps(event, separators=(",", ":")) + "\n\n"
                done = True
                STATE["completed_streams"] += 1
            finally:
                if not done:
                    STATE["aborted"] += 1

        media = "application/jsonlines" if args.dialect == "lmi" else "text/event-stream"
        return StreamingResponse(events(), media_type=media, headers=headers)

    return Starlette(
        routes=[
            Route("/ping", ping),
            Route("/stats", stats),
            Route("/invocations", invocations, methods=["POST"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dialect", default="tgi")
    parser.add_argument("--model-dir")
    args = parser.parse_args()
    failure = os.environ.get("STUB_FAIL_ON_START")
    if failure:
        print("loading model...", flush=True)
        print(f"RuntimeError: {failure}", flush=True)
        sys.exit(3)
    print(f"stub container on {args.host}:{args.port} dialect={args.dialect}", flush=True)
    uvicorn.run(make_app(args), host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
