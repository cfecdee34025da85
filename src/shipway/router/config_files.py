"""HAProxy's config files: ``haproxy.cfg`` plus one ``conf.d/<route>.cfg`` per route.

HAProxy reads both (``-f haproxy.cfg -f conf.d``: a folder's ``.cfg`` files in name
order). A whole new config (a route added or removed: a reload) is written beside the
live one, checked with ``haproxy -c`` and swapped in; until the reload succeeds the
previous files are kept to put back. A server change rewrites only its route's file.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from shipway.router.haproxy_config import ConfigOptions, render_main, render_route, render_spares
from shipway.router.state import DesiredState, RouteState, SparePool, write_atomic

ROUTES_FOLDER = "conf.d"
SPARES = "-spares.cfg"  # no route key starts with "-"


class ConfigFiles:
    """The config files of the router in ``options.directory``."""

    def __init__(self, options: ConfigOptions) -> None:
        self.options = options
        self.main = options.directory / "haproxy.cfg"
        self.routes = options.directory / ROUTES_FOLDER

    @property
    def paths(self) -> list[Path]:
        """What HAProxy is started with (each after a ``-f``)."""
        return [self.main, self.routes]

    def route_path(self, key: str) -> Path:
        return self.routes / f"{key}.cfg"

    def write_route(self, key: str, route: RouteState) -> None:
        """Keep one route's file in step with its state (a reload by hand loses nothing)."""
        self.routes.mkdir(exist_ok=True)
        write_atomic(self.route_path(key), render_route(key, route, self.options.bind_host))

    def write_routes(
        self, state: DesiredState, written: Iterable[str], removed: Iterable[str]
    ) -> None:
        """Rewrite the files of the routes ``written``, delete those of the routes ``removed``."""
        self.write_spares(state.spares)  # first: a slot is never in two files
        for key in written:
            self.write_route(key, state.routes[key])
        for key in removed:
            self.route_path(key).unlink(missing_ok=True)

    def write_spares(self, spares: SparePool) -> None:
        """Keep the spares' file in step with the pool (not rewritten when unchanged)."""
        path, text = self.routes / SPARES, render_spares(spares, self.options.bind_host)
        if not path.exists() or path.read_text() != text:
            self.routes.mkdir(exist_ok=True)
            write_atomic(path, text)

    @contextmanager
    def replaced(self, state: DesiredState, check: Callable[[list[Path]], None]) -> Iterator[None]:
        """Write the complete config of ``state``, ``check`` it, put it in place for the body
        (a reload); if the body raises, the previous files are put back."""
        directory = self.options.directory
        stage, old = directory / f"{ROUTES_FOLDER}.new", directory / f"{ROUTES_FOLDER}.old"
        main_new = directory / "haproxy.cfg.new"
        for folder in (stage, old):
            shutil.rmtree(folder, ignore_errors=True)
        stage.mkdir(parents=True)
        for key, route in state.routes.items():
            (stage / f"{key}.cfg").write_text(render_route(key, route, self.options.bind_host))
        (stage / SPARES).write_text(render_spares(state.spares, self.options.bind_host))
        main_new.write_text(render_main(self.options))
        check([main_new, stage])
        previous_main = self.main.read_text() if self.main.exists() else None
        had_routes = self.routes.exists()
        if had_routes:
            self.routes.rename(old)
        stage.rename(self.routes)
        main_new.replace(self.main)
        try:
            yield
        except BaseException:
            shutil.rmtree(self.routes, ignore_errors=True)
            if had_routes:
                old.rename(self.routes)
            if previous_main is not None:
                write_atomic(self.main, previous_main)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
