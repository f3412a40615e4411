"""A small order app of "the user's", written with Flask and knowing nothing of agent_selfevolve.

It stands for any app a user wants agents to work on: HTML pages for people, a JSON API for programs and a SQLite
database. The task file next to it says how to start it, when it is ready and how to check an attempt's work.
Run by hand: `python3 app.py --port 5000 --db /tmp/orders.sqlite`, then open http://127.0.0.1:5000/.
"""

from __future__ import annotations

import argparse
import sqlite3
from html import escape
from typing import Any

from flask import Flask, Response, g, jsonify, redirect, request

PRODUCTS = {"Blue Mug": 8.5, "Desk Lamp": 34.0, "Pocket Notebook": 4.25}
app = Flask(__name__)


def db() -> sqlite3.Connection:
    if "db" not in g:
        g.db = sqlite3.connect(app.config["DB"])
        g.db.row_factory = sqlite3.Row
    return g.db


@app.teardown_appcontext
def close_db(_exc: BaseException | None) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><title>{escape(title)} - Corner Orders</title></head><body>"
            f'<nav><a href="/">Home</a> <a href="/orders/new">New order</a></nav><main><h1>{escape(title)}</h1>'
            f"{body}</main></body></html>")


@app.get("/")
def home() -> str:
    rows = "".join(f"<li>{escape(n)}: ${p:.2f}</li>" for n, p in PRODUCTS.items())
    count = db().execute("SELECT COUNT(*) FROM orders").fetchone()[0]
    return page("Welcome", f"<p>We sell:</p><ul>{rows}</ul><p>{count} order(s) so far.</p>")


@app.get("/orders/new")
def new_order(error: str = "") -> str:
    options = "".join(f'<option value="{escape(n)}">{escape(n)}</option>' for n in PRODUCTS)
    alert = f'<p role="alert">{escape(error)}</p>' if error else ""
    return page("New order", f'{alert}<form method="post" action="/orders">'
                '<label>Customer name <input name="customer"></label> '
                f'<label>Product <select name="product">{options}</select></label> '
                '<label>Quantity <input type="number" name="quantity" value="1" min="1"></label> '
                '<button type="submit">Place order</button></form>')


@app.post("/orders")
def place_order() -> Any:
    customer = request.form.get("customer", "").strip()
    product = request.form.get("product", "")
    try:
        quantity = int(request.form.get("quantity", "0"))
    except ValueError:
        quantity = 0
    if not customer or product not in PRODUCTS or quantity < 1:
        return new_order("Please give a customer name, a product and a quantity of at least 1."), 400
    cur = db().execute("INSERT INTO orders (customer, product, quantity) VALUES (?, ?, ?)",
                       (customer, product, quantity))
    db().commit()
    return redirect(f"/orders/{cur.lastrowid}", code=303)


@app.get("/orders/<int:order_id>")
def show_order(order_id: int) -> Any:
    row = db().execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    if row is None:
        return page("No such order", ""), 404
    return page(f"Order #{row['id']} placed",
                f"<p>{row['quantity']} x {escape(row['product'])} for {escape(row['customer'])}.</p>")


@app.get("/api/orders")
def api_orders() -> Response:
    customer = request.args.get("customer")
    sql, args = ("SELECT * FROM orders WHERE customer = ? ORDER BY id", (customer,)) if customer else \
        ("SELECT * FROM orders ORDER BY id", ())
    return jsonify({"orders": [dict(r) for r in db().execute(sql, args)]})


@app.get("/health")
def health() -> str:
    return "ok"


@app.post("/__reset")
def reset() -> Response:
    db().execute("DELETE FROM orders")
    db().commit()
    return jsonify({"reset": True})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--db", default="orders.sqlite")
    args = parser.parse_args()
    app.config["DB"] = args.db
    with sqlite3.connect(args.db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
                     "product TEXT NOT NULL, quantity INTEGER NOT NULL)")
    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
