"""Account settings behind a login: profile, notifications, timezone and theme, saved only by the Save button."""

from __future__ import annotations

from typing import Any

from ase_webkit import Request, Response, WebApp, esc, main, redirect, verdict

USERS = {
    "alice": {"password": "wonderland", "display_name": "Alice Liddell", "email_notifications": True,
              "timezone": "UTC", "theme": "light"},
    "bob": {"password": "builder42", "display_name": "Bob", "email_notifications": False,
            "timezone": "America/New_York", "theme": "light"},
}
TIMEZONES = ["UTC", "Europe/London", "Europe/Paris", "America/New_York", "Asia/Tokyo"]
THEMES = {"light": "Light", "dark": "Dark", "system": "Follow system"}
FIELDS = ("display_name", "email_notifications", "timezone", "theme")


class Settings(WebApp):
    name, title = "settings", "Acme Account"
    nav = [("/settings", "Settings"), ("/logout", "Log out")]

    def __init__(self) -> None:
        super().__init__()
        self.get.update({"/": self.home, "/login": self.login_form, "/settings": self.settings,
                         "/logout": self.logout})
        self.post.update({"/login": self.login, "/settings": self.save})
        self.checks.update({"settings": self.check_settings})

    def initial_state(self, setup: dict[str, Any]) -> dict[str, Any]:
        return {"user": None, "failed_logins": 0, "saved": 0, "notice": "",
                "accounts": {u: {k: v for k, v in d.items() if k != "password"} for u, d in USERS.items()}}

    def home(self, req: Request) -> Response:
        return redirect("/settings" if req.state["user"] else "/login")

    def login_form(self, req: Request, error: str = "") -> Response:
        body = ('<form method="post" action="/login"><p><label for="username">Username</label> '
                '<input id="username" name="username" autocomplete="username"></p><p><label for="password">'
                'Password</label> <input id="password" name="password" type="password"></p>'
                '<button type="submit">Log in</button></form>')
        return self.page("Log in", body, error=error)

    def login(self, req: Request) -> Response:
        user = req.arg("username").lower()
        if user in USERS and USERS[user]["password"] == req.arg("password"):
            req.state["user"] = user
            return redirect("/settings")
        req.state["failed_logins"] += 1
        return self.login_form(req, "Wrong username or password.")

    def logout(self, req: Request) -> Response:
        req.state["user"] = None
        return redirect("/login")

    def settings(self, req: Request, error: str = "") -> Response:
        user = req.state["user"]
        if not user:
            return redirect("/login")
        a = req.state["accounts"][user]
        tz = "".join(f'<option{" selected" if t == a["timezone"] else ""}>{t}</option>' for t in TIMEZONES)
        themes = "".join(f'<label><input type="radio" name="theme" value="{k}"{" checked" if a["theme"] == k else ""}>'
                         f" {v}</label> " for k, v in THEMES.items())
        checked = " checked" if a["email_notifications"] else ""
        body = (f"<p>Signed in as <strong>{esc(user)}</strong>.</p>"
                '<form method="post" action="/settings"><h2>Profile</h2>'
                f'<p><label for="display_name">Display name</label> <input id="display_name" name="display_name" '
                f'value="{esc(a["display_name"])}"></p><h2>Preferences</h2>'
                f'<p><label><input type="checkbox" name="email_notifications" value="on"{checked}> '
                'Email notifications</label></p>'
                f'<p><label for="timezone">Timezone</label> <select id="timezone" name="timezone">{tz}</select></p>'
                f"<fieldset><legend>Theme</legend>{themes}</fieldset>"
                '<p><button type="submit">Save settings</button></p></form>')
        notice, req.state["notice"] = req.state["notice"], ""
        return self.page("Settings", body, notice=notice, error=error)

    def save(self, req: Request) -> Response:
        user = req.state["user"]
        if not user:
            return redirect("/login")
        name, tz, theme = req.arg("display_name"), req.arg("timezone"), req.arg("theme")
        if not name or len(name) > 40:
            return self.settings(req, "Display name must be 1 to 40 characters.")
        if tz not in TIMEZONES or theme not in THEMES:
            return self.settings(req, "Invalid timezone or theme.")
        req.state["accounts"][user].update(display_name=name, timezone=tz, theme=theme,
                                           email_notifications=req.arg("email_notifications") == "on")
        req.state["saved"] += 1
        req.state["notice"] = "Settings saved."
        return redirect("/settings")

    def check_settings(self, state: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """The saved account of args['user'] matches args['expect'] and other users are untouched."""
        user, expect = args["user"], args.get("expect", {})
        account = state["accounts"].get(user, {})
        others_ok = all(state["accounts"][u] == {k: v for k, v in d.items() if k != "password"}
                        for u, d in USERS.items() if u != user)
        ok = all(account.get(k) == v for k, v in expect.items()) and others_ok
        return verdict(ok, {"account": account, "saved": state["saved"], "others_untouched": others_ok})


APP = Settings()

if __name__ == "__main__":
    main(APP)
