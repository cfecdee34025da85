"""Serve the web dashboard: ``/dashboard`` (the page) and ``/dashboard/static/*`` (its files).

The dashboard is hand-written HTML, CSS and JavaScript committed in ``static/``: no
build step. It calls the JSON API with the token the user gives it, so it needs no
route of its own beyond these files, and the page itself holds nothing secret.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"

# The page runs only its own script and talks only to this origin; a token kept in
# localStorage is then out of reach of injected markup (which the app never builds
# from data anyway: it sets textContent).
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/dashboard")
def dashboard() -> FileResponse:
    """The single page of the dashboard (its views are chosen by the URL fragment)."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=HEADERS)


def mount_dashboard(app: FastAPI) -> None:
    """Add the dashboard page and its static files to ``app``."""
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
