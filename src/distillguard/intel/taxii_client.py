"""Pull partner intel from (and push ours to) a TAXII 2.1 server with ``taxii2-client``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from distillguard.intel._common import IntelError, format_time
from distillguard.intel.partner import ImportSummary, import_bundle

__all__ = ["open_collection", "fetch_objects", "pull", "push_bundle"]

#: Objects per page when pulling; well under servers' usual maximum page sizes.
PAGE_SIZE = 500


def _bearer(token: str) -> Any:
    """A ``requests`` auth object sending ``Authorization: Bearer <token>``."""
    from requests.auth import AuthBase

    class BearerAuth(AuthBase):
        def __call__(self, r: Any) -> Any:
            r.headers["Authorization"] = f"Bearer {token}"
            return r

        def __repr__(self) -> str:  # never show the token
            return "BearerAuth(***)"

    return BearerAuth()


def open_collection(
    url: str, collection_id: str, user: str | None, password: str | None,
    token: str | None = None,
) -> Any:
    """A ``taxii2client.v21.Collection`` for ``collection_id``.

    ``url`` may be the discovery URL (``.../taxii2/``), an API root URL, or the collection
    URL itself. Authenticates with ``token`` (Bearer) when given, else user + password
    (Basic).
    """
    try:
        from taxii2client.exceptions import TAXIIServiceException
        from taxii2client.v21 import ApiRoot, Collection, Server
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise IntelError("pulling needs the intel extra: pip install 'distillguard[intel]'") \
            from exc
    from requests.exceptions import RequestException

    base = url if url.endswith("/") else url + "/"
    creds: dict[str, Any] = (
        {"auth": _bearer(token)} if token else {"user": user, "password": password}
    )
    who = user if not token else "this token"
    try:
        if f"/collections/{collection_id}/" in base:
            return Collection(base, **creds)
        roots = (
            Server(base, **creds).api_roots
            if base.rstrip("/").endswith("taxii2")
            else [ApiRoot(base, **creds)]
        )
        for root in roots:
            for col in root.collections:
                if col.id == collection_id:
                    return col
    except (RequestException, TAXIIServiceException) as exc:
        raise IntelError(f"TAXII server {url} failed: {exc}") from exc
    raise IntelError(f"collection {collection_id} not found at {url} (or not visible to {who})")


def fetch_objects(collection: Any, added_after: datetime | str | None = None) -> list[dict[str, Any]]:
    """Every object of the collection (all pages; latest versions), optionally only those
    added after a time."""
    from requests.exceptions import RequestException
    from taxii2client.exceptions import TAXIIServiceException
    from taxii2client.v21 import as_pages

    kwargs: dict[str, Any] = {}
    if added_after is not None:
        kwargs["added_after"] = (
            format_time(added_after, "us") if isinstance(added_after, datetime) else added_after
        )
    objects: list[dict[str, Any]] = []
    try:
        for envelope in as_pages(collection.get_objects, per_request=PAGE_SIZE, **kwargs):
            objects.extend(envelope.get("objects", []))
    except (RequestException, TAXIIServiceException) as exc:
        raise IntelError(f"fetching {collection.url} failed: {exc}") from exc
    return objects


def pull(
    url: str,
    collection_id: str,
    user: str | None,
    password: str | None,
    con: Any,
    *,
    token: str | None = None,
    source: str | None = None,
    confidence: int = 50,
    added_after: datetime | str | None = None,
) -> ImportSummary:
    """Fetch a partner's collection and import it into ``partner_indicators``.

    ``source`` defaults to the collection's title.
    """
    col = open_collection(url, collection_id, user, password, token)
    objects = fetch_objects(col, added_after)
    return import_bundle({"type": "bundle", "objects": objects}, con,
                         source or str(col.title), confidence)


def push_bundle(
    url: str, collection_id: str, user: str | None, password: str | None, bundle: Any,
    token: str | None = None,
) -> Any:
    """POST a bundle's objects to a collection; returns the taxii2client ``Status``."""
    import orjson
    from requests.exceptions import RequestException
    from taxii2client.exceptions import AccessError, TAXIIServiceException

    if hasattr(bundle, "serialize"):
        bundle = bundle.serialize()
    data = orjson.loads(bundle) if isinstance(bundle, str | bytes) else bundle
    col = open_collection(url, collection_id, user, password, token)
    try:
        return col.add_objects({"objects": data.get("objects", [])}, wait_for_completion=False)
    except AccessError as exc:
        raise IntelError(str(exc)) from exc
    except (RequestException, TAXIIServiceException) as exc:
        raise IntelError(f"pushing to {col.url} failed: {exc}") from exc
