"""Sign-up wizard: three steps (account, plan, review) with server-side validation at each step."""

from __future__ import annotations

import re
from typing import Any

from ase_webkit import Request, Response, WebApp, esc, main, redirect, verdict

PLANS = {"free": "Free", "pro": "Pro", "team": "Team"}
BILLING = {"monthly": "Monthly", "yearly": "Yearly"}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


class Wizard(WebApp):
    name, title = "wizard", "Cloudly sign-up"
    nav = [("/", "Start over")]

    def __init__(self) -> None:
        super().__init__()
        self.get.update({"/": self.account, "/plan": self.plan, "/review": self.review, "/done": self.done})
        self.post.update({"/": self.save_account, "/plan": self.save_plan, "/review": self.submit})
        self.checks.update({"registered": self.check_registered})

    def initial_state(self, setup: dict[str, Any]) -> dict[str, Any]:
        return {"draft": {}, "step": 1, "registrations": []}

    def _steps(self, current: int) -> str:
        names = ["Account", "Plan", "Review"]
        items = "".join(f'<li{" aria-current=step" if i == current else ""}>{n}</li>'
                        for i, n in enumerate(names, 1))
        return f'<ol aria-label="Progress">{items}</ol>'

    def account(self, req: Request, error: str = "") -> Response:
        d = req.state["draft"]
        fields = [("full_name", "Full name", "text"), ("email", "Email", "email"),
                  ("password", "Password", "password"), ("confirm", "Confirm password", "password")]
        inputs = "".join(f'<p><label for="{k}">{label}</label> <input id="{k}" name="{k}" type="{t}" '
                         f'value="{esc(d.get(k, "")) if t != "password" else ""}"></p>' for k, label, t in fields)
        return self.page("Step 1 of 3: Account", self._steps(1) + f'<form method="post" action="/" novalidate>'
                         f'{inputs}<button type="submit">Next</button></form>', error=error)

    def save_account(self, req: Request) -> Response:
        v = {k: req.arg(k) for k in ("full_name", "email", "password", "confirm")}
        req.state["draft"].update(full_name=v["full_name"], email=v["email"])
        if not v["full_name"]:
            return self.account(req, "Full name is required.")
        if not EMAIL.match(v["email"]):
            return self.account(req, "Enter a valid email address.")
        if len(v["password"]) < 8:
            return self.account(req, "Password must be at least 8 characters.")
        if v["password"] != v["confirm"]:
            return self.account(req, "Passwords do not match.")
        req.state["draft"]["password_set"] = True
        req.state["step"] = 2
        return redirect("/plan")

    def plan(self, req: Request, error: str = "") -> Response:
        if req.state["step"] < 2:
            return redirect("/")
        d = req.state["draft"]
        radios = "".join(f'<label><input type="radio" name="plan" value="{k}"'
                         f'{" checked" if d.get("plan") == k else ""}> {v}</label> ' for k, v in PLANS.items())
        options = "".join(f'<option value="{k}"{" selected" if d.get("billing") == k else ""}>{v}</option>'
                          for k, v in BILLING.items())
        body = (self._steps(2) + '<form method="post" action="/plan"><fieldset><legend>Plan</legend>'
                f'{radios}</fieldset><p><label for="billing">Billing period</label> <select id="billing" '
                f'name="billing"><option value="">Choose...</option>{options}</select></p>'
                '<p><label><input type="checkbox" name="terms" value="yes"> I accept the terms of service</label></p>'
                '<a href="/">Back</a> <button type="submit">Next</button></form>')
        return self.page("Step 2 of 3: Plan", body, error=error)

    def save_plan(self, req: Request) -> Response:
        if req.state["step"] < 2:
            return redirect("/")
        plan, billing = req.arg("plan"), req.arg("billing")
        req.state["draft"].update(plan=plan, billing=billing)
        if plan not in PLANS:
            return self.plan(req, "Choose a plan.")
        if billing not in BILLING:
            return self.plan(req, "Choose a billing period.")
        if req.arg("terms") != "yes":
            return self.plan(req, "You must accept the terms of service.")
        req.state["step"] = 3
        return redirect("/review")

    def review(self, req: Request) -> Response:
        if req.state["step"] < 3:
            return redirect("/plan" if req.state["step"] == 2 else "/")
        d = req.state["draft"]
        rows = "".join(f"<tr><th>{label}</th><td>{esc(value)}</td></tr>" for label, value in [
            ("Full name", d["full_name"]), ("Email", d["email"]), ("Plan", PLANS[d["plan"]]),
            ("Billing", BILLING[d["billing"]])])
        body = (self._steps(3) + f"<table>{rows}</table>"
                '<form method="post" action="/review"><a href="/plan">Back</a> '
                '<button type="submit">Create account</button></form>')
        return self.page("Step 3 of 3: Review", body)

    def submit(self, req: Request) -> Response:
        if req.state["step"] < 3:
            return redirect("/")
        d = req.state["draft"]
        req.state["registrations"].append({k: d[k] for k in ("full_name", "email", "plan", "billing")})
        req.state["draft"], req.state["step"] = {}, 1
        return redirect("/done")

    def done(self, req: Request) -> Response:
        regs = req.state["registrations"]
        if not regs:
            return redirect("/")
        return self.page("Account created", f"<p>Welcome, {esc(regs[-1]['full_name'])}! Your "
                         f"{PLANS[regs[-1]['plan']]} account is ready.</p>")

    def check_registered(self, state: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Exactly one registration, with every expected field equal (case-insensitive)."""
        regs = state["registrations"]
        ok = len(regs) == 1 and all(str(regs[0].get(k, "")).lower() == str(v).lower() for k, v in args.items())
        return verdict(ok, {"registrations": regs})


APP = Wizard()

if __name__ == "__main__":
    main(APP)
