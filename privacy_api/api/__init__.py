"""Thin REST blueprints: parse, call one service, dump."""

from __future__ import annotations

from apiflask import APIFlask

from . import budgets, datasets, federated, ledger, queries, sql, users


def register_blueprints(app: APIFlask) -> None:
    app.register_blueprint(users.bp)
    app.register_blueprint(datasets.bp)
    app.register_blueprint(budgets.bp)
    app.register_blueprint(ledger.bp)
    app.register_blueprint(queries.bp)
    app.register_blueprint(sql.bp)
    app.register_blueprint(federated.bp)
