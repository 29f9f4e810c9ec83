"""The request's unit of work: one Session, committed after a successful response."""

from __future__ import annotations

from flask import Flask, Response, current_app, g
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from .error_responses import database_unavailable


def db_session() -> Session:
    if "db_session" not in g:
        g.db_session = current_app.extensions["privacy_api"].db.sessions()
    session: Session = g.db_session
    return session


def init_request_session(app: Flask) -> None:
    @app.after_request
    def _commit(response: Response) -> Response:
        session: Session | None = g.pop("db_session", None)
        if session is not None:
            try:
                if response.status_code < 400:
                    session.commit()
                else:
                    session.rollback()
            except OperationalError:
                # The database went away at commit. Raised here, after the view, it would
                # bypass the error handlers and become a 500: answer as they would.
                return database_unavailable()
            finally:
                session.close()
        return response

    @app.teardown_request
    def _close(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("db_session", None)
        if session is not None:
            session.rollback()
            session.close()
