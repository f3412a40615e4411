"""Shop: search the catalogue, add to cart, change quantities, check out with a validated address form."""

from __future__ import annotations

from typing import Any

from ase_webkit import Request, Response, WebApp, esc, main, redirect, verdict

PRODUCTS: list[dict[str, Any]] = [
    {"id": 1, "name": "Blue Ceramic Mug", "price": 12.50, "category": "Kitchen", "desc": "Holds 350 ml."},
    {"id": 2, "name": "Red Ceramic Mug", "price": 12.50, "category": "Kitchen", "desc": "Holds 350 ml."},
    {"id": 3, "name": "Travel Mug", "price": 19.00, "category": "Kitchen", "desc": "Insulated steel, 450 ml."},
    {"id": 4, "name": "Chef Knife", "price": 45.00, "category": "Kitchen", "desc": "20 cm blade."},
    {"id": 5, "name": "Pocket Notebook", "price": 4.75, "category": "Stationery", "desc": "A6, dotted, 96 pages."},
    {"id": 6, "name": "Hardcover Notebook", "price": 14.00, "category": "Stationery", "desc": "A5, ruled."},
    {"id": 7, "name": "Spiral Notebook", "price": 6.20, "category": "Stationery", "desc": "A4, squared."},
    {"id": 8, "name": "Gel Pen (3 pack)", "price": 5.50, "category": "Stationery", "desc": "Black, blue, red."},
    {"id": 9, "name": "Desk Lamp", "price": 32.00, "category": "Home", "desc": "LED, dimmable."},
    {"id": 10, "name": "Wool Blanket", "price": 58.00, "category": "Home", "desc": "150 x 200 cm."},
    {"id": 11, "name": "Scented Candle", "price": 9.90, "category": "Home", "desc": "Cedar and vanilla."},
    {"id": 12, "name": "Bluetooth Speaker", "price": 39.00, "category": "Electronics", "desc": "10 h battery."},
]
BY_ID = {p["id"]: p for p in PRODUCTS}
SHIPPING = {"standard": ("Standard (5-7 days)", 0.0), "express": ("Express (1-2 days)", 9.0)}


def _product_list(items: list[dict[str, Any]]) -> str:
    if not items:
        return "<p>No products found.</p>"
    rows = "".join(f'<li><a href="/product?id={p["id"]}">{esc(p["name"])}</a> - ${p["price"]:.2f}</li>'
                   for p in items)
    return f'<ul aria-label="Products">{rows}</ul>'


class Shop(WebApp):
    name, title = "shop", "Corner Shop"
    nav = [("/", "Home"), ("/cart", "Cart"), ("/orders", "Orders")]

    def __init__(self) -> None:
        super().__init__()
        self.get.update({"/": self.home, "/search": self.search, "/product": self.product, "/cart": self.cart,
                         "/checkout": self.checkout, "/orders": self.orders})
        self.post.update({"/cart/add": self.add, "/cart/update": self.update, "/checkout": self.place})
        self.checks.update({"order_placed": self.check_order, "cart_contains": self.check_cart})

    def initial_state(self, setup: dict[str, Any]) -> dict[str, Any]:
        return {"cart": {}, "orders": [], "notice": ""}

    def _flash(self, state: dict[str, Any]) -> str:
        notice, state["notice"] = state.get("notice", ""), ""
        return notice

    def home(self, req: Request) -> Response:
        cats = sorted({p["category"] for p in PRODUCTS})
        links = " | ".join(f'<a href="/search?category={esc(c)}">{esc(c)}</a>' for c in cats)
        form = ('<form action="/search" method="get" role="search"><label for="q">Search products</label> '
                '<input id="q" name="q" type="search"> <button type="submit">Search</button></form>')
        return self.page("Welcome", f"{form}<p>Categories: {links}</p><h2>All products</h2>"
                         + _product_list(PRODUCTS), notice=self._flash(req.state))

    def search(self, req: Request) -> Response:
        q, cat = req.arg("q").lower(), req.arg("category")
        hits = [p for p in PRODUCTS if (not q or q in p["name"].lower()) and (not cat or p["category"] == cat)]
        label = f'for "{esc(q)}"' if q else esc(cat)
        return self.page(f"Results {label}".strip(), f"<p>{len(hits)} result(s).</p>" + _product_list(hits))

    def product(self, req: Request) -> Response:
        pid = req.arg("id")
        p = BY_ID.get(int(pid)) if pid.isdigit() else None
        if p is None:
            return self.page("Not found", "<p>No such product.</p>")
        form = (f'<form action="/cart/add" method="post"><input type="hidden" name="id" value="{p["id"]}">'
                '<label for="qty">Quantity</label> <input id="qty" name="qty" type="number" min="1" value="1"> '
                '<button type="submit">Add to cart</button></form>')
        return self.page(p["name"], f'<p>Price: ${p["price"]:.2f}</p><p>Category: {esc(p["category"])}</p>'
                         f'<p>{esc(p["desc"])}</p>{form}')

    def add(self, req: Request) -> Response:
        pid, qty = req.arg("id"), req.arg("qty", "1")
        if not pid.isdigit() or int(pid) not in BY_ID or not qty.isdigit() or int(qty) < 1:
            return self.page("Cannot add", "<p>Invalid product or quantity.</p>", error="Invalid quantity.")
        req.state["cart"][pid] = req.state["cart"].get(pid, 0) + int(qty)
        req.state["notice"] = f"Added {qty} x {BY_ID[int(pid)]['name']} to your cart."
        return redirect("/cart")

    def cart(self, req: Request) -> Response:
        cart = req.state["cart"]
        if not cart:
            return self.page("Your cart", '<p>Your cart is empty. <a href="/">Continue shopping</a></p>',
                             notice=self._flash(req.state))
        rows, total = "", 0.0
        for pid, qty in cart.items():
            p = BY_ID[int(pid)]
            total += p["price"] * qty
            rows += (f'<tr><td>{esc(p["name"])}</td><td><form class="inline" action="/cart/update" method="post">'
                     f'<input type="hidden" name="id" value="{pid}"><label>Quantity of {esc(p["name"])} '
                     f'<input name="qty" type="number" min="0" value="{qty}"></label> '
                     f'<button type="submit">Update {esc(p["name"])}</button></form></td>'
                     f'<td>${p["price"] * qty:.2f}</td></tr>')
        body = (f"<table><thead><tr><th>Product</th><th>Quantity</th><th>Subtotal</th></tr></thead>"
                f"<tbody>{rows}</tbody></table><p>Total: ${total:.2f}</p>"
                '<p>Set a quantity to 0 to remove the item. <a href="/checkout">Proceed to checkout</a></p>')
        return self.page("Your cart", body, notice=self._flash(req.state))

    def update(self, req: Request) -> Response:
        pid, qty = req.arg("id"), req.arg("qty")
        if pid in req.state["cart"] and qty.isdigit():
            if int(qty) == 0:
                del req.state["cart"][pid]
            else:
                req.state["cart"][pid] = int(qty)
            req.state["notice"] = "Cart updated."
        return redirect("/cart")

    def checkout(self, req: Request, error: str = "", values: dict[str, str] | None = None) -> Response:
        if not req.state["cart"]:
            return self.page("Checkout", '<p>Your cart is empty. <a href="/">Continue shopping</a></p>')
        v = values or {}
        options = "".join(f'<option value="{k}"{" selected" if v.get("shipping") == k else ""}>{esc(label)}'
                          f' (+${cost:.2f})</option>' for k, (label, cost) in SHIPPING.items())
        body = ('<form action="/checkout" method="post">'
                f'<p><label for="name">Full name</label> <input id="name" name="name" value="{esc(v.get("name", ""))}">'
                f'</p><p><label for="address">Street address</label> <input id="address" name="address" '
                f'value="{esc(v.get("address", ""))}"></p><p><label for="city">City</label> <input id="city" '
                f'name="city" value="{esc(v.get("city", ""))}"></p><p><label for="shipping">Shipping</label> '
                f'<select id="shipping" name="shipping">{options}</select></p>'
                '<button type="submit">Place order</button></form>')
        return self.page("Checkout", body, error=error)

    def place(self, req: Request) -> Response:
        values = {k: req.arg(k) for k in ("name", "address", "city", "shipping")}
        missing = [k for k in ("name", "address", "city") if not values[k]]
        if missing or values["shipping"] not in SHIPPING:
            return self.checkout(req, f"Please fill in: {', '.join(missing) or 'shipping'}.", values)
        if not req.state["cart"]:
            return redirect("/cart")
        items = {BY_ID[int(pid)]["name"]: qty for pid, qty in req.state["cart"].items()}
        order = {"id": len(req.state["orders"]) + 1001, "items": items, **values}
        req.state["orders"].append(order)
        req.state["cart"] = {}
        req.state["notice"] = f"Thank you! Order #{order['id']} has been placed."
        return redirect("/orders")

    def orders(self, req: Request) -> Response:
        rows = "".join(f'<li>Order #{o["id"]}: ' + ", ".join(f"{q} x {esc(n)}" for n, q in o["items"].items())
                       + f' - {esc(SHIPPING[o["shipping"]][0])} to {esc(o["name"])}</li>' for o in req.state["orders"])
        return self.page("Your orders", f"<ul>{rows}</ul>" if rows else "<p>No orders yet.</p>",
                         notice=self._flash(req.state))

    def check_order(self, state: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Some order has exactly `items` (and `shipping`/`name`/`city` when given)."""
        for order in state["orders"]:
            if order["items"] == args.get("items") and all(
                    str(order.get(k, "")).strip().lower() == str(args[k]).strip().lower()
                    for k in ("shipping", "name", "city") if k in args):
                return verdict(True, {"order": order})
        return verdict(False, {"orders": state["orders"], "cart": state["cart"]})

    def check_cart(self, state: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """The cart holds exactly `items` and nothing was ordered."""
        cart = {BY_ID[int(pid)]["name"]: qty for pid, qty in state["cart"].items()}
        return verdict(cart == args.get("items") and not state["orders"], {"cart": cart})


APP = Shop()

if __name__ == "__main__":
    main(APP)
