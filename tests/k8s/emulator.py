"""A Kubernetes API server in memory, faithful enough for the real Kopf operator to run against.

kmock's ``KubernetesEmulator`` (0.8) stores objects and streams watch events, but as shipped it
blocks Kopf: no ``uid``/``resourceVersion``/``creationTimestamp``, a failed JSON-patch ``test``
answers 500 (Kopf retries forever), LIST answers ``resourceVersion: "..."`` and WATCH replays every
object as ADDED whatever version was asked for. :class:`Emulator` keeps kmock's object store,
request log and discovery, and replaces the write path with one that behaves like an API server
where mlplane's operator depends on it:

- CREATE sets ``uid``, ``resourceVersion``, ``creationTimestamp``, ``generation: 1`` and the
  namespace from the URL; ``generateName`` works (Kopf names Events that way); a create drops
  ``status`` when the resource has the status subresource.
- ``metadata.generation`` grows by one when anything but ``metadata`` and ``status`` changes,
  never on status writes — so ``status.observedGeneration`` means what it means on a cluster.
- The status subresource is separate: ``PATCH .../status`` changes only ``status``; a PATCH of
  the main object leaves ``status`` alone (for resources declared with ``status``).
- merge patches and JSON patches; a failed JSON-patch ``test`` (Kopf's optimistic lock on
  ``/metadata/resourceVersion``) answers 422, a stale ``metadata.resourceVersion`` 409.
- a write that changes nothing bumps nothing and emits no watch event (as the API server).
- PUT replaces an object (also ``/status``), with the same optimistic-concurrency check; it is
  answered directly, so kmock reactions a test adds do not intercept it.
- DELETE honours finalizers (``deletionTimestamp`` first, gone when the last one is removed) and
  collects dependents whose ``ownerReferences`` name the deleted object's uid (background
  cascading deletion, which on a cluster is the garbage collector's job).
- LIST answers the current ``resourceVersion``; WATCH from a version replays exactly the events
  after it (then streams live ones); WATCH without one starts with ADDED for what exists.
- ``labelSelector`` on LIST and WATCH, with the API server's syntax (``a=b``, ``a==b``, ``a!=b``,
  ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``, comma-separated, all must hold); a malformed
  one is a 400. A watch filters each event by the object's labels after the change: an object
  leaving the selector is not sent as DELETED (the API server does send that).

Not emulated: field selectors, ``timeoutSeconds``, server-side apply, strategic merge
patch semantics (treated as a JSON merge patch), admission (schemas, CEL), scale subresource,
deletecollection, bookmarks, 410 Gone.

Tests read and write the store through :meth:`~Emulator.get_object`, :meth:`~Emulator.list_objects`,
:meth:`~Emulator.create_object`, :meth:`~Emulator.patch_object` and
:meth:`~Emulator.delete_object`, which go through
the same code as HTTP requests, so the operator's watches see the test's writes.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import itertools
import json
import re
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock

#: Verbs every declared resource serves (discovery only; the emulator does not enforce them).
VERBS = frozenset({"create", "delete", "get", "list", "patch", "update", "watch"})

ResourceRef = kmock.resource | str

_REQUIREMENT = re.compile(
    r"""\s*(?:
        (?P<absent>!)\s*(?P<akey>[^\s=!,()]+)
      | (?P<skey>[^\s=!,()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)
      | (?P<ekey>[^\s=!,()]+)\s*(?P<eq>==|=|!=)\s*(?P<value>[^\s=!,()]*)
      | (?P<key>[^\s=!,()]+)
    )\s*(?:,|$)""",
    re.VERBOSE,
)


def label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """A predicate over labels for a Kubernetes label selector; ``ValueError`` if malformed."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    position, text = 0, text.strip()
    while position < len(text):
        found = _REQUIREMENT.match(text, position)
        if found is None or found.end() == position:
            raise ValueError(f"unable to parse requirement: {text[position:]!r}")
        position = found.end()
        g = found.groupdict()
        if g["absent"]:
            checks.append(lambda labels, k=g["akey"]: k not in labels)
        elif g["op"]:
            values = {v.strip() for v in g["values"].split(",") if v.strip()}
            if g["op"] == "in":
                checks.append(lambda labels, k=g["skey"], v=values: labels.get(k) in v)
            else:
                checks.append(lambda labels, k=g["skey"], v=values: labels.get(k) not in v)
        elif g["eq"]:
            if g["eq"] == "!=":
                checks.append(lambda labels, k=g["ekey"], v=g["value"]: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=g["ekey"], v=g["value"]: labels.get(k) == v)
        else:
            checks.append(lambda labels, k=g["key"]: k in labels)
    return lambda labels: all(check(labels) for check in checks)


def _resource(ref: ResourceRef) -> kmock.resource:
    return ref if isinstance(ref, kmock.resource) else kmock.resource(ref)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _essence(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What ``metadata.generation`` tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _without_version(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(obj)
    out["metadata"] = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
    return out


def _merge(old: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(old) if isinstance(old, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with an API-server-like write path (see the module docstring)."""

    _versions: Iterable[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _current: int = attrs.field(default=0, init=False)
    #: Every watch event ever emitted, per resource, with its resourceVersion.
    _history: dict[kmock.resource, list[tuple[int, dict[str, Any]]]] = attrs.field(
        factory=lambda: defaultdict(list), init=False
    )
    #: Response bodies computed by the write path, served by the fallback reactions.
    _results: dict[kmock.Request, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _names: Iterable[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    #: Fault hooks: ``(match, action, once)``, run after a request is applied, before its answer.
    _after: list[tuple[Callable[[kmock.Request], bool], Callable[[kmock.Request], None], bool]] = (
        attrs.field(factory=list, init=False)
    )
    #: Fault hooks run before a request is applied; a request one of them takes is dropped.
    _before: list[tuple[Callable[[kmock.Request], bool], Callable[[kmock.Request], None], bool]] = (
        attrs.field(factory=list, init=False)
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()

    # --- declaring resources ---------------------------------------------------------------

    def declare(
        self,
        ref: ResourceRef,
        *,
        kind: str,
        namespaced: bool = True,
        subresources: Iterable[str] = ("status",),
        shortnames: Iterable[str] = (),
        categories: Iterable[str] = (),
    ) -> None:
        """Serve a resource in discovery (Kopf finds resources only through discovery)."""
        res = _resource(ref)
        self.resources[res] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=namespaced,
            verbs=set(VERBS),
            shortnames=set(shortnames),
            categories=set(categories),
            subresources=set(subresources),
        )

    def _info(self, res: kmock.resource) -> kmock.ResourceInfo | None:
        # Not .get(): kmock's ResourcesArray creates an entry for any key it is asked for.
        return self.resources[res] if res in self.resources else None  # noqa: SIM401

    def _has_status(self, res: kmock.resource) -> bool:
        info = self._info(res)
        return info is not None and "status" in info.subresources

    def _namespaced(self, res: kmock.resource, fallback: str | None) -> bool:
        info = self._info(res)
        if info is None or info.namespaced is None:
            return fallback is not None
        return info.namespaced

    # --- the write path --------------------------------------------------------------------

    def _next_version(self) -> str:
        self._current = next(self._versions)  # type: ignore[call-overload]
        return str(self._current)

    async def _emit(self, res: kmock.resource, type_: str, obj: Mapping[str, Any]) -> None:
        event = {"type": type_, "object": copy.deepcopy(dict(obj))}
        self._history[res].append((int(obj["metadata"]["resourceVersion"]), event))
        await self._buses[res].put(event)

    def _stored(self, res: kmock.resource, namespace: str | None, name: str) -> dict | None:
        key = (res, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def _store(self, res: kmock.resource, namespace: str | None, name: str, body: dict) -> None:
        key = (res, namespace, name)
        if key not in self.objects:
            self.objects[key] = body
        else:
            self.objects[key].history.append(body)

    async def _create(self, res: kmock.resource, namespace: str | None, data: Any) -> dict:
        if not isinstance(data, Mapping):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="not an object")
        body = copy.deepcopy(dict(data))
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="bad metadata")
        namespaced = self._namespaced(res, namespace)
        if namespaced:
            namespace = namespace or meta.get("namespace") or "default"
            meta["namespace"] = namespace
        else:
            namespace = None
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{next(self._names):05x}"  # type: ignore[call-overload]
        name = meta.get("name")
        if not name:
            raise kmock.KubernetesError(
                status=422, reason="Invalid", message="metadata.name: Required value"
            )
        if self._stored(res, namespace, name) is not None:
            raise kmock.KubernetesError(
                status=409, reason="AlreadyExists", message=f"{res.plural} {name!r} already exists"
            )
        if self._has_status(res):
            body.pop("status", None)
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_version()
        self._store(res, namespace, name, body)
        await self._emit(res, "ADDED", body)
        return body

    def _apply(self, old: dict, data: Any, content_type: str, method: str) -> dict:
        if method == "PUT":
            if not isinstance(data, Mapping):
                raise kmock.KubernetesError(
                    status=400, reason="BadRequest", message="not an object"
                )
            return copy.deepcopy(dict(data))
        if "json-patch" in content_type or isinstance(data, list):
            try:
                return jsonpatch.apply_patch(old, data, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise kmock.KubernetesError(
                    status=422, reason="Invalid", message=f"the JSON patch failed: {exc}"
                ) from None
        if "apply-patch" in content_type:
            raise kmock.KubernetesError(
                status=415, reason="UnsupportedMediaType", message="server-side apply"
            )
        if not isinstance(data, Mapping):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="not an object")
        return _merge(old, data)

    async def _update(
        self,
        res: kmock.resource,
        namespace: str | None,
        name: str,
        data: Any,
        *,
        subresource: str | None = None,
        content_type: str = "application/merge-patch+json",
        method: str = "PATCH",
    ) -> dict:
        namespace = namespace if self._namespaced(res, namespace) else None
        old = self._stored(res, namespace, name)
        if old is None:
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message=f"{res.plural} {name!r} not found"
            )
        if subresource not in (None, "status"):
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message=f"subresource {subresource!r} not emulated"
            )
        given = data.get("metadata", {}).get("resourceVersion") if isinstance(data, dict) else None
        if given and str(given) != old["metadata"]["resourceVersion"]:
            raise kmock.KubernetesError(
                status=409,
                reason="Conflict",
                message="the object has been modified; please apply your changes to the latest "
                "version and try again",
            )
        new = self._apply(old, data, content_type, method)
        if not isinstance(new, dict):
            raise kmock.KubernetesError(status=422, reason="Invalid", message="not an object")
        if self._has_status(res):
            if subresource == "status":
                # Only the status moves; everything else stays as stored.
                status = new.get("status")
                new = copy.deepcopy(old)
                new.pop("status", None)
                if status is not None:
                    new["status"] = status
            else:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        # Identity and server-owned metadata cannot be changed by a client.
        if not isinstance(new.get("metadata"), dict):
            new["metadata"] = {}
        meta = new["metadata"]
        for key in ("uid", "name", "namespace", "creationTimestamp", "generation"):
            if key in old["metadata"]:
                meta[key] = old["metadata"][key]
            else:
                meta.pop(key, None)
        if old["metadata"].get("deletionTimestamp"):
            meta["deletionTimestamp"] = old["metadata"]["deletionTimestamp"]
        else:
            meta.pop("deletionTimestamp", None)
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return old  # a no-op write: no new version, no event
        if _essence(new) != _essence(old):
            meta["generation"] = int(old["metadata"].get("generation", 0)) + 1
        meta["resourceVersion"] = self._next_version()
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._remove(res, namespace, name, new)
            return new
        self._store(res, namespace, name, new)
        await self._emit(res, "MODIFIED", new)
        return new

    async def _delete(self, res: kmock.resource, namespace: str | None, name: str) -> dict:
        namespace = namespace if self._namespaced(res, namespace) else None
        old = self._stored(res, namespace, name)
        if old is None:
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message=f"{res.plural} {name!r} not found"
            )
        if old["metadata"].get("deletionTimestamp"):
            return old
        if old["metadata"].get("finalizers"):
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"]["resourceVersion"] = self._next_version()
            self._store(res, namespace, name, new)
            await self._emit(res, "MODIFIED", new)
            return new
        new = copy.deepcopy(old)
        new["metadata"]["resourceVersion"] = self._next_version()
        await self._remove(res, namespace, name, new)
        return new

    async def _remove(
        self, res: kmock.resource, namespace: str | None, name: str, last: dict
    ) -> None:
        """Gone for good: the DELETED event, then its dependents (background cascade)."""
        self._store(res, namespace, name, last)
        self.objects[res, namespace, name].delete()
        await self._emit(res, "DELETED", last)
        uid = last["metadata"].get("uid")
        for (dep_res, dep_ns, dep_name), obj in list(self.objects.items()):
            if obj.deleted:
                continue
            owners = obj.raw.get("metadata", {}).get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners):
                with contextlib.suppress(kmock.KubernetesError):  # already gone
                    await self._delete(dep_res, dep_ns, dep_name)

    # --- fault hooks -----------------------------------------------------------------------

    def after_request(
        self,
        match: Callable[[kmock.Request], bool],
        action: Callable[[kmock.Request], None],
        *,
        once: bool = True,
    ) -> None:
        """Run ``action(request)`` for a request ``match`` accepts, once the emulator has
        applied it (the object is stored, the watch event sent) and before it answers: the
        moment where a client killed there has changed the world without knowing it. With
        ``once`` the hook is dropped after its first run."""
        self._after.append((match, action, once))

    def before_request(
        self,
        match: Callable[[kmock.Request], bool],
        action: Callable[[kmock.Request], None],
        *,
        once: bool = True,
    ) -> None:
        """Run ``action(request)`` for a request ``match`` accepts *instead of* applying it
        (it is answered 503 and changes nothing): a client killed there never got its write
        in, e.g. the status after an external side effect (an MLflow alias moved)."""
        self._before.append((match, action, once))

    @staticmethod
    def _run_hooks(hooks: list[Any], request: kmock.Request) -> bool:
        ran = False
        for hook in list(hooks):
            match, action, once = hook
            if match(request):
                if once:
                    hooks.remove(hook)
                action(request)
                ran = True
        return ran

    # --- HTTP ------------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or res.plural is None:
            return await kmock.RawHandler._handle(self, request)
        content_type = request.headers.get("Content-Type", "")
        if self._run_hooks(self._before, request):
            return aiohttp.web.json_response(
                {"kind": "Status", "status": "Failure", "code": 503,
                 "message": "dropped by a test's fault hook"}, status=503)  # fmt: skip
        async with self._lock:
            if request.action == kmock.action.CREATE:
                self._results[request] = await self._create(res, request.namespace, request.data)
            elif request.action == kmock.action.UPDATE and request.name:
                self._results[request] = await self._update(
                    res,
                    request.namespace,
                    request.name,
                    request.data,
                    subresource=request.subresource,
                    content_type=content_type,
                )
            elif request.action == kmock.action.DELETE and request.name:
                self._results[request] = await self._delete(res, request.namespace, request.name)
            elif request.method == kmock.method.PUT and request.name:
                body = await self._update(
                    res,
                    request.namespace,
                    request.name,
                    request.data,
                    subresource=request.subresource,
                    content_type=content_type,
                    method="PUT",
                )
                self._run_hooks(self._after, request)
                return aiohttp.web.json_response(body)
            self._run_hooks(self._after, request)
        try:
            return await kmock.RawHandler._handle(self, request)
        finally:
            self._results.pop(request, None)

    async def _serve_create(self, request: kmock.Request) -> dict[str, Any]:
        return self._results[request]

    async def _serve_update(self, request: kmock.Request) -> dict[str, Any]:
        return self._results[request]

    async def _serve_delete(self, request: kmock.Request) -> dict[str, Any]:
        return self._results[request]

    def _matches(self, request: kmock.Request, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        if request.name is not None and meta.get("name") != request.name:
            return False
        selector = request.params.get("labelSelector")
        return not selector or label_selector(selector)(meta.get("labels") or {})

    @staticmethod
    def _check_selector(request: kmock.Request) -> None:
        try:
            label_selector(request.params.get("labelSelector") or "")
        except ValueError as exc:
            raise kmock.KubernetesError(status=400, message=str(exc)) from None

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        assert request.resource is not None
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        self._check_selector(request)
        async with self._lock:
            items = [o for o in self.list_objects(request.resource) if self._matches(request, o)]
            version = str(self._current)
        return {"kind": "List", "metadata": {"resourceVersion": version}, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        self._check_selector(request)
        yield b""  # send the headers: the stream is open even if nothing happens
        res = request.resource
        assert res is not None
        since = request.params.get("resourceVersion") or "0"
        async with self._lock:
            # Mark the bus under the lock that every write holds: nothing falls in between.
            mark = await self._buses[res].mark()
            if since == "0":
                replay = [
                    {"type": "ADDED", "object": o}
                    for o in self.list_objects(res)
                    if self._matches(request, o)
                ]
            else:
                replay = [
                    copy.deepcopy(e)
                    for v, e in self._history[res]
                    if v > int(since) and self._matches(request, e["object"])
                ]
        try:
            for event in replay:
                yield event
            async for event in mark:
                if self._matches(request, event["object"]):
                    yield event
        finally:
            await self._buses[res].unmark(mark)

    # --- direct access for tests -----------------------------------------------------------

    def get_object(
        self, ref: ResourceRef, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """A copy of the stored object, or None when it does not exist (or is gone)."""
        return self._stored(_resource(ref), namespace, name)

    def list_objects(self, ref: ResourceRef, namespace: str | None = None) -> list[dict[str, Any]]:
        """Copies of every existing object of a resource (in one namespace, or all)."""
        res = _resource(ref)
        return [
            copy.deepcopy(obj.raw)
            for (r, ns, _), obj in list(self.objects.items())
            if r == res and not obj.deleted and (namespace is None or ns == namespace)
        ]

    async def create_object(self, ref: ResourceRef, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create as a client would (the operator's watches see it)."""
        async with self._lock:
            ns = body.get("metadata", {}).get("namespace")
            return await self._create(_resource(ref), ns, body)

    async def patch_object(
        self,
        ref: ResourceRef,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any] | list[dict[str, Any]],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch (a dict) or JSON-patch (a list) as a client would, e.g. to play KubeRay
        writing a RayJob's status (``subresource="status"``)."""
        async with self._lock:
            return await self._update(
                _resource(ref), namespace, name, patch, subresource=subresource
            )

    async def delete_object(
        self, ref: ResourceRef, namespace: str | None, name: str
    ) -> dict[str, Any]:
        """Delete as a client would (finalizers and owner references are honoured)."""
        async with self._lock:
            return await self._delete(_resource(ref), namespace, name)

    def requests_to(
        self,
        ref: ResourceRef,
        *,
        method: str | None = None,
        name: str | None = None,
        subresource: str | type[Ellipsis] | None = ...,
    ) -> list[kmock.Request]:
        """The HTTP requests received for a resource, filtered (e.g. PATCHes of a status)."""
        res = _resource(ref)
        return [
            r
            for r in self
            if r.resource == res
            and (method is None or r.method == kmock.method(method.upper()))
            and (name is None or r.name == name)
            and (subresource is ... or r.subresource == subresource)
        ]

    @staticmethod
    def dump(obj: Any) -> str:
        """Stable JSON of an object, for byte-for-byte comparisons in tests."""
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))
