"""The console's web app (FastAPI + Jinja2): pages, forms, sessions, CSRF, security headers.

Attacker-controlled text (prompts, account ids, user agents, org names, reasons...) reaches
pages only through Jinja2 autoescaping, after :func:`distillguard.report._safe.clean` bounds
it and neutralises control and bidi characters; data for scripts goes in
``<script type="application/json">`` blocks through ``tojson`` (which escapes ``<``, ``>``,
``&`` and ``'``). The Content-Security-Policy allows scripts only from the console's own
``/static`` (no inline script, no ``eval``), so even a missed escape would not run.
"""

from __future__ import annotations

import io
import secrets
import tempfile
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from distillguard.config import Config, load_config
from distillguard.console import feedback as fb
from distillguard.console import queries as qy
from distillguard.console._db import ConsoleDB
from distillguard.console.actions import (
    EXCEPTION_KINDS,
    RESPONSES,
    ActionError,
    Actions,
)
from distillguard.console.auth import ROLES, AuthError, Session, Users, csrf_ok
from distillguard.errors import DistillguardError
from distillguard.report._safe import clean
from distillguard.respond.audit import AuditLog, verify
from distillguard.respond.policy import Policy, PolicyInput, load_policy
from distillguard.respond.state import MemoryState, StateStore

__all__ = ["ConsoleConfig", "create_app"]

COOKIE = "dg_console_session"
PRE_COOKIE = "dg_console_login"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


@dataclass
class ConsoleConfig:
    """How the console is wired to the store, the gateway state and the audit log."""

    db: str | Path
    audit: str | Path | None = None          # default: <store dir>/console/audit.jsonl
    state: StateStore | None = None          # the gateway's state store (RedisState)
    shared_state: bool = False
    policy: Policy | None = None
    config: Config | None = None
    work_dir: str | Path | None = None       # default: <store dir>/console
    intel_key: bytes | None = None
    producer: str = "distillguard console"
    secure_cookies: bool = False
    gateway_audit: list[Path] = field(default_factory=list)
    page_size: int = qy.PAGE_SIZE


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("distillguard.console", "templates"),
        autoescape=True, trim_blocks=True,
        lstrip_blocks=True)
    env.filters["t"] = lambda v, n=200: clean(v, n)
    env.filters["pct"] = lambda v, d=0: "-" if v is None else f"{float(v):.{d}%}"
    env.filters["ts"] = lambda v: "" if v is None else (
        v.strftime("%Y-%m-%d %H:%M") if isinstance(v, datetime) else clean(v, 40))
    env.filters["qs"] = lambda d: urlencode({k: v for k, v in d.items() if v not in ("", None)})
    return env


def _safe_next(nxt: str | None) -> str:
    """Only same-site relative paths (no scheme, host or ``//``)."""
    if not nxt or not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
        return "/"
    parts = urlsplit(nxt)
    return "/" if parts.scheme or parts.netloc else nxt


def create_app(cc: ConsoleConfig) -> FastAPI:
    """Build the console app on the store ``cc.db``."""
    cfg = cc.config or load_config()
    db = ConsoleDB(cc.db, cfg)
    work = Path(cc.work_dir) if cc.work_dir else Path(cc.db).resolve().parent / "console"
    work.mkdir(parents=True, exist_ok=True)
    audit_path = Path(cc.audit) if cc.audit else work / "audit.jsonl"
    audit = AuditLog(audit_path)
    policy = cc.policy or load_policy()
    state = cc.state if cc.state is not None else MemoryState()
    users = Users(db)
    actions = Actions(db, audit, state, policy, shared_state=cc.shared_state)
    env = _env()
    flashes: dict[str, list[tuple[str, str]]] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        db.close()

    app = FastAPI(title="distillguard console", docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.state.db, app.state.users, app.state.actions = db, users, actions
    app.state.audit_path, app.state.work_dir = audit_path, work
    static = resources.files("distillguard.console").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                      ) -> Response:
        resp = await call_next(request)
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    # ------------------------------------------------------------------ helpers
    def session_of(request: Request) -> Session | None:
        return users.session(request.cookies.get(COOKIE))

    def render(request: Request, name: str, s: Session | None, status: int = 200,
               **ctx: Any) -> HTMLResponse:
        msgs = flashes.pop(s.token_hash, []) if s else []
        html = env.get_template(name).render(
            s=s, flashes=msgs, path=request.url.path, roles=ROLES,
            shared_state=cc.shared_state, policy_version=policy.version, **ctx)
        return HTMLResponse(html, status_code=status)

    def flash(s: Session, kind: str, msg: str) -> None:
        flashes.setdefault(s.token_hash, []).append((kind, msg))

    def denied(request: Request, s: Session | None, why: str, status: int = 403
               ) -> HTMLResponse:
        return render(request, "error.html", s, status=status, message=why)

    def need(request: Request, role: str = "viewer") -> Session | Response:
        s = session_of(request)
        if s is None:
            if request.method == "GET":
                return RedirectResponse("/login?" + urlencode({"next": str(request.url.path)
                                        + ("?" + request.url.query if request.url.query
                                           else "")}), 303)
            return PlainTextResponse("not logged in", 401)
        if not s.can(role):
            return denied(request, s, f"this needs the {role} role; you are {s.role}")
        return s

    async def form_for(request: Request, role: str) -> tuple[Session, Any] | Response:
        """Session, role and CSRF checks for a state-changing request; the parsed form."""
        s = need(request, role)
        if not isinstance(s, Session):
            return s
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.url.netloc:
            return denied(request, s, "cross-origin request refused")
        form = await request.form()
        token = form.get("csrf") or request.headers.get("x-csrf-token")
        if not csrf_ok(s.csrf, str(token) if token else None):
            actions.note(s, "csrf_refused", path=request.url.path)
            return denied(request, s, "missing or wrong CSRF token: reload the page and retry")
        return s, form

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    # ------------------------------------------------------------------ login
    @app.get("/login")
    async def login_page(request: Request, next: str = "/") -> Response:
        tok = secrets.token_urlsafe(32)
        resp = render(request, "login.html", None, login_csrf=tok, next=_safe_next(next),
                      no_users=users.count() == 0, error=None)
        resp.set_cookie(PRE_COOKIE, tok, httponly=True, samesite="strict",
                        secure=cc.secure_cookies, max_age=1800)
        return resp

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        if not csrf_ok(request.cookies.get(PRE_COOKIE), str(form.get("csrf") or "")):
            return render(request, "error.html", None, status=403,
                          message="missing or wrong CSRF token: reload the login page")
        name, pw = str(form.get("username") or ""), str(form.get("password") or "")
        role = users.check(name, pw)
        if role is None:
            actions.audit.append("console_action", action="login_failed",
                                 actor=clean(name, 64))
            tok = secrets.token_urlsafe(32)
            resp = render(request, "login.html", None, status=401, login_csrf=tok,
                          next=_safe_next(str(form.get("next") or "/")), no_users=False,
                          error="wrong user name or password")
            resp.set_cookie(PRE_COOKIE, tok, httponly=True, samesite="strict",
                            secure=cc.secure_cookies, max_age=1800)
            return resp
        token, s = users.login(name)
        actions.note(s, "login")
        resp = RedirectResponse(_safe_next(str(form.get("next") or "/")), 303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                        secure=cc.secure_cookies, max_age=8 * 3600)
        resp.delete_cookie(PRE_COOKIE)
        return resp

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        got = await form_for(request, "viewer")
        if isinstance(got, Response):
            return got
        s, _ = got
        users.logout(s)
        actions.note(s, "logout")
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(COOKIE)
        return resp

    # ------------------------------------------------------------------ queue
    @app.get("/")
    async def queue_page(request: Request) -> Response:
        s = need(request)
        if not isinstance(s, Session):
            return s
        qp = request.query_params
        try:
            page = int(qp.get("page") or 1)
        except ValueError:
            page = 1
        f = qy.QueueFilter(q=qp.get("q", "")[:200], model=qp.get("model", "")[:200],
                           capability=qp.get("capability", "")[:64],
                           country=qp.get("country", "")[:16], state=qp.get("state", ""),
                           since=qp.get("since", ""), until=qp.get("until", ""),
                           show_excepted=qp.get("show_excepted") == "1", page=page)
        try:
            res = qy.queue(db, f, cc.page_size)
        except ValueError as exc:
            return render(request, "error.html", s, status=400, message=str(exc))
        base = {k: v for k, v in qp.items() if k != "page"}
        return render(request, "queue.html", s, res=res, facets=qy.facets(db),
                      states=qy.STATES, base=base)

    # ------------------------------------------------------------------ campaign
    @app.get("/campaign")
    async def campaign(request: Request, id: str = "") -> Response:
        s = need(request)
        if not isinstance(s, Session):
            return s
        data = qy.campaign_page(db, id)
        if data is None:
            return render(request, "error.html", s, status=404, message="no such campaign")
        members = [m["account_id"] for m in data["members"]]
        gw = actions.gateway_state(members)
        pol = {m["account_id"]: policy.decide(PolicyInput(
            float(m["score"]), int(m["n_requests"]), (), id)).action for m in data["members"]}
        graph = {"nodes": [{"id": m["account_id"], "score": round(float(m["score"]), 3),
                            "suspended": m["account_id"] in gw,
                            "verdict": m["verdict"] or ""} for m in data["members"]],
                 "edges": [{"a": e["a"], "b": e["b"], "w": round(float(e["weight"]), 3),
                            "kinds": e["kinds"]} for e in data["edges"]]}
        return render(request, "campaign.html", s, d=data, cid=id, gw=gw, pol=pol,
                      graph=graph, responses=RESPONSES, kinds=EXCEPTION_KINDS,
                      can_export=cc.intel_key is not None)

    # ------------------------------------------------------------------ account
    @app.get("/account")
    async def account(request: Request, id: str = "", page: int = 1) -> Response:
        s = need(request)
        if not isinstance(s, Session):
            return s
        data = qy.account_page(db, id, page)
        if data is None:
            return render(request, "error.html", s, status=404, message="no such account")
        a = data["account"]
        gw = actions.gateway_state([id]).get(id)
        pol = policy.decide(PolicyInput(float(a["score"]), int(a["n_requests"]), (),
                                        a["campaign_id"]))
        gw_audit: list[dict[str, Any]] = []
        if cc.gateway_audit:
            from distillguard.respond.audit import query

            for p in cc.gateway_audit:
                if p.is_file():
                    gw_audit += list(query(p, account=id, limit=100))
        return render(request, "account.html", s, d=data, aid=id, gw=gw, pol=pol,
                      responses=RESPONSES, kinds=EXCEPTION_KINDS, gw_audit=gw_audit[-100:])

    # ------------------------------------------------------------------ actions
    @app.post("/act")
    async def act(request: Request) -> Response:
        got = await form_for(request, "analyst")
        if isinstance(got, Response):
            return got
        s, form = got
        action = str(form.get("action") or "")
        accounts = [str(a) for a in form.getlist("accounts")]
        cid = str(form.get("campaign_id") or "") or None
        if form.get("all_members") == "1" and cid:
            accounts = qy.campaign_members(db, cid)
        reason = str(form.get("reason") or "")
        nxt = _safe_next(str(form.get("next") or "/"))
        try:
            if action == "confirm":
                actions.confirm(s, accounts, campaign_id=cid, reason=reason)
                msg = f"confirmed {len(accounts)} account(s) as distillation"
            elif action == "dismiss":
                kind = str(form.get("exception_kind") or "")
                if form.get("exception") is not None:     # one field "kind:value"
                    kind, _, ev = str(form.get("exception")).partition(":")
                    form = {**{k: form.get(k) for k in form}, "exception_value": ev}
                exc = None
                if kind:
                    value = str(form.get("exception_value") or "")
                    if kind == "account" and not value and len(accounts) == 1:
                        value = accounts[0]
                    exc = (kind, value)
                actions.dismiss(s, accounts, reason, campaign_id=cid, exception=exc,
                                review_days=int(form.get("review_days") or 90))
                msg = f"dismissed {len(accounts)} account(s) as false positive" + (
                    f"; exception for {exc[0]} recorded" if exc else "")
            elif action == "reopen":
                actions.reopen(s, accounts, reason)
                msg = f"reopened {len(accounts)} account(s)"
            elif action in RESPONSES:
                actions.respond(s, accounts, action, reason, campaign_id=cid)
                msg = f"{action} applied to {len(accounts)} account(s)" + (
                    " at the gateway" if action == "suspend" and cc.shared_state else
                    " (recorded; see docs/console.md for what the gateway enforces)")
            elif action == "lift":
                actions.lift(s, accounts, reason, campaign_id=cid)
                msg = f"responses lifted on {len(accounts)} account(s)"
            elif action == "allowlist":
                actions.allowlist(s, str(form.get("exception_kind") or ""),
                                  str(form.get("exception_value") or ""), reason,
                                  int(form.get("review_days") or 90))
                msg = "allow-list exception recorded"
            else:
                raise ActionError(f"unknown action {action[:40]!r}")
            flash(s, "ok", msg)
        except (DistillguardError, ValueError) as exc:
            flash(s, "error", str(exc))
        return RedirectResponse(nxt, 303)

    @app.post("/campaign/export")
    async def export(request: Request) -> Response:
        got = await form_for(request, "analyst")
        if isinstance(got, Response):
            return got
        s, form = got
        cid, kind = str(form.get("campaign_id") or ""), str(form.get("kind") or "")
        if cc.intel_key is None:
            flash(s, "error", "exports need the sharing group's key: start the console "
                  "with --intel-key-file")
            return RedirectResponse("/campaign?" + urlencode({"id": cid}), 303)
        try:
            camp = _campaign_dict(db, cfg, cid)
            from distillguard.intel import export_bundle, write_report

            if kind == "stix":
                bundle = export_bundle([camp], db.con, cc.intel_key, cc.producer)
                body = bundle.serialize(pretty=True).encode()
                actions.note(s, "export_stix", campaign_id=cid, bytes=len(body))
                return Response(body, media_type="application/json", headers={
                    "Content-Disposition": f'attachment; filename="{_fname(cid)}-stix.json"'})
            with tempfile.TemporaryDirectory(prefix="dg-evidence-") as tmp, db.cursor() as c:
                manifest = write_report(camp, tmp, cc.intel_key, cc.producer, con=c)
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                    for p in sorted(Path(tmp).iterdir()):
                        z.write(p, p.name)
                actions.note(s, "export_evidence", campaign_id=cid,
                             manifest=manifest.read_text("utf-8")[:4000])
            return Response(buf.getvalue(), media_type="application/zip", headers={
                "Content-Disposition": f'attachment; filename="{_fname(cid)}-evidence.zip"'})
        except (DistillguardError, ImportError) as exc:
            flash(s, "error", f"export failed: {exc}")
            return RedirectResponse("/campaign?" + urlencode({"id": cid}), 303)

    # ------------------------------------------------------------------ exceptions
    @app.get("/exceptions")
    async def exceptions_page(request: Request) -> Response:
        s = need(request)
        if not isinstance(s, Session):
            return s
        return render(request, "exceptions.html", s, rows=actions.exceptions(),
                      kinds=EXCEPTION_KINDS)

    @app.post("/exceptions/revoke")
    async def revoke(request: Request) -> Response:
        got = await form_for(request, "analyst")
        if isinstance(got, Response):
            return got
        s, form = got
        try:
            actions.revoke_exception(s, int(form.get("id") or 0), str(form.get("reason") or ""))
            flash(s, "ok", "exception revoked")
        except (DistillguardError, ValueError) as exc:
            flash(s, "error", str(exc))
        return RedirectResponse("/exceptions", 303)

    @app.get("/exceptions.yaml")
    async def exceptions_yaml(request: Request) -> Response:
        s = need(request)
        if not isinstance(s, Session):
            return s
        import yaml

        rows = [{k: (str(v) if isinstance(v, datetime) or k == "review_by" else v)
                 for k, v in r.items()} for r in actions.exceptions()]
        return PlainTextResponse(yaml.safe_dump({"exceptions": rows}, sort_keys=False,
                                                allow_unicode=True),
                                 media_type="application/yaml")

    # ------------------------------------------------------------------ feedback
    @app.get("/feedback")
    async def feedback_page(request: Request) -> Response:
        s = need(request)
        if not isinstance(s, Session):
            return s
        return render(request, "feedback.html", s, labels=fb.labels(db),
                      proposals=fb.proposals(db))

    @app.get("/feedback/labels.csv")
    async def labels_csv(request: Request) -> Response:
        s = need(request)
        if not isinstance(s, Session):
            return s
        return PlainTextResponse(fb.labels_csv(db), media_type="text/csv", headers={
            "Content-Disposition": 'attachment; filename="labels.csv"'})

    @app.post("/feedback/preview")
    async def recal_preview(request: Request) -> Response:
        got = await form_for(request, "analyst")
        if isinstance(got, Response):
            return got
        s, _ = got
        try:
            body = fb.preview(db, cfg)
            pid = fb.save_proposal(db, s.username, body)
            actions.note(s, "recalibration_preview", proposal=pid,
                         before=body["before"], after=body["after"])
            flash(s, "ok", f"recalibration proposal {pid} computed; nothing applied yet")
        except DistillguardError as exc:
            flash(s, "error", str(exc))
        return RedirectResponse("/feedback", 303)

    @app.post("/feedback/apply")
    async def recal_apply(request: Request) -> Response:
        got = await form_for(request, "admin")
        if isinstance(got, Response):
            return got
        s, form = got
        try:
            pid = int(form.get("id") or 0)
            path = fb.apply_calibration(db, pid, s.username, work)
            actions.note(s, "recalibration_apply", proposal=pid, path=str(path))
            flash(s, "ok", f"applied: the next `distillguard detect --config {path}` uses it")
        except (DistillguardError, ValueError) as exc:
            flash(s, "error", str(exc))
        return RedirectResponse("/feedback", 303)

    # ------------------------------------------------------------------ audit
    @app.get("/audit")
    async def audit_page(request: Request) -> Response:
        s = need(request)
        if not isinstance(s, Session):
            return s
        import orjson

        entries: list[dict[str, Any]] = []
        if audit_path.is_file():
            with audit_path.open("rb") as fh:
                lines = fh.readlines()[-200:]
            entries = [orjson.loads(x) for x in reversed(lines) if x.strip()]
        v = verify(audit_path) if audit_path.is_file() else None
        return render(request, "audit.html", s, entries=entries, verified=v,
                      audit_path=str(audit_path))

    # ------------------------------------------------------------------ users
    @app.get("/users")
    async def users_page(request: Request) -> Response:
        s = need(request, "admin")
        if not isinstance(s, Session):
            return s
        return render(request, "users.html", s, users=users.list())

    @app.post("/users")
    async def users_post(request: Request) -> Response:
        got = await form_for(request, "admin")
        if isinstance(got, Response):
            return got
        s, form = got
        op, name = str(form.get("op") or ""), str(form.get("username") or "")
        try:
            if op == "add":
                users.add(name, str(form.get("password") or ""), str(form.get("role") or ""))
            elif op == "role":
                users.set_role(name, str(form.get("role") or ""))
            elif op in ("disable", "enable"):
                if name == s.username:
                    raise AuthError("you cannot disable yourself")
                users.disable(name, op == "disable")
            else:
                raise AuthError("unknown operation")
            actions.note(s, f"user_{op}", target_user=name, new_role=form.get("role"))
            flash(s, "ok", f"user {name}: {op} done")
        except DistillguardError as exc:
            flash(s, "error", str(exc))
        return RedirectResponse("/users", 303)

    return app


def _fname(cid: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in cid)[:80] or "campaign"


def _campaign_dict(db: ConsoleDB, cfg: Config, cid: str) -> dict[str, Any]:
    """The campaign as ``results/campaigns.json`` holds it (for the intel exports)."""
    import polars as pl

    from distillguard.scoring.campaigns import describe_campaigns

    members = qy.campaign_members(db, cid)
    if not members:
        raise DistillguardError("no such campaign")
    page = qy.campaign_page(db, cid)
    assert page is not None
    share = 0.0
    flagged = pl.DataFrame({"campaign_id": [cid],
                            "campaign_score": [float(page["campaign"]["score"])],
                            "coord_share": [share], "reasons": [page["reasons"]]})
    scores = pl.DataFrame({"account_id": members, "campaign_id": [cid] * len(members)})
    with db.cursor() as c:
        out = describe_campaigns(c, cfg, flagged, scores)
    camp = out[0]
    acts = db.rows("""SELECT ts, actor, action, count(*) AS n FROM console_actions
                      WHERE campaign_id = ? GROUP BY ALL ORDER BY ts""", [cid])
    camp["actions"] = [f"{a['ts']:%Y-%m-%d %H:%M} {a['action']} on {a['n']} account(s) "
                       f"by {a['actor']}" for a in acts]
    return camp
