"""A small Kubernetes API for one custom resource that does what kmock does not: resourceVersions,
410 Gone for a version compacted away, and watch bookmarks.

Only list and watch are served, the way the real API server answers them
(`GET .../plural` and `GET .../plural?watch=1&resourceVersion=N`), which is
all the watch logic in `receiver.kube.watch` relies on.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from aiohttp import web


class FakeApiServer:
    def __init__(self, group: str, version: str, plural: str) -> None:
        self.path = f"/apis/{group}/{version}/{plural}"
        self.version = 1
        self.oldest = 1
        """Watches from a version older than this get 410 Gone (etcd compacted it)."""
        self.objects: dict[str, dict[str, Any]] = {}
        self.changes: list[tuple[int, str, dict[str, Any]]] = []
        self.requests: list[dict[str, str]] = []
        self.bookmark_next_watch = False
        self._changed = asyncio.Condition()
        self._closing = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(self.path, self._serve)
        return app

    async def put(self, name: str, obj: dict[str, Any], *, announce: bool = True) -> None:
        """Create or replace an object; `announce=False` changes it without a watch event reaching anyone."""
        self.version += 1
        stored = copy.deepcopy(obj)
        stored.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        change = "MODIFIED" if name in self.objects else "ADDED"
        self.objects[name] = stored
        if announce:
            self.changes.append((self.version, change, stored))
        async with self._changed:
            self._changed.notify_all()

    async def compact(self) -> None:
        """Forget every change so far and end open watches: they must come back and get 410."""
        self.oldest = self.version + 1
        await self.end_watches()

    async def end_watches(self) -> None:
        """End open watches as the API server does at its timeout."""
        self._closing += 1
        async with self._changed:
            self._changed.notify_all()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.query))
        if request.query.get("watch", "").lower() not in ("true", "1"):
            return web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "List",
                    "metadata": {"resourceVersion": str(self.version)},
                    "items": list(self.objects.values()),
                }
            )
        return await self._watch(request)

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        response = web.StreamResponse()
        await response.prepare(request)
        if since < self.oldest - 1:
            status = {
                "kind": "Status",
                "code": 410,
                "reason": "Expired",
                "message": "too old resource version",
            }
            await response.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
            return response
        if self.bookmark_next_watch:
            self.bookmark_next_watch = False
            self.version += 1  # something else changed in etcd; the bookmark says the watch may skip it
            bookmark = {"kind": "Custom", "metadata": {"resourceVersion": str(self.version)}}
            await response.write(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
            return response
        closing = self._closing
        deadline = asyncio.get_running_loop().time() + float(request.query.get("timeoutSeconds", "300"))
        sent = since
        while closing == self._closing:
            for number, change, obj in self.changes:
                if number > sent:
                    await response.write(json.dumps({"type": change, "object": obj}).encode() + b"\n")
                    sent = number
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    break
        return response
