"""Todo list: add, complete, delete and filter items; the list lives on the server per session."""

from __future__ import annotations

from typing import Any

from ase_webkit import Request, Response, WebApp, esc, main, redirect, verdict

SEED = [("Water the plants", False), ("Renew passport", False), ("Pay electricity bill", True),
        ("Book dentist appointment", False), ("Return library books", True)]


class Todo(WebApp):
    name, title = "todo", "Tiny Todo"
    nav = [("/", "All"), ("/?show=active", "Active"), ("/?show=completed", "Completed")]

    def __init__(self) -> None:
        super().__init__()
        self.get.update({"/": self.listing})
        self.post.update({"/add": self.add, "/toggle": self.toggle, "/delete": self.delete,
                          "/clear-completed": self.clear})
        self.checks.update({"todos": self.check_todos})

    def initial_state(self, setup: dict[str, Any]) -> dict[str, Any]:
        items = [{"id": i + 1, "title": t, "done": d} for i, (t, d) in enumerate(SEED)]
        return {"items": items, "next_id": len(items) + 1, "error": ""}

    def listing(self, req: Request) -> Response:
        show = req.arg("show")
        items = [i for i in req.state["items"]
                 if show not in ("active", "completed") or i["done"] == (show == "completed")]
        rows = ""
        for i in items:
            label = "Mark not done" if i["done"] else "Mark done"
            rows += (f'<li><span{" style=text-decoration:line-through" if i["done"] else ""}>{esc(i["title"])}</span>'
                     f'{" (done)" if i["done"] else ""} <form class="inline" method="post" action="/toggle">'
                     f'<input type="hidden" name="id" value="{i["id"]}"><button type="submit" '
                     f'aria-label="{label}: {esc(i["title"])}">{label}</button></form> '
                     '<form class="inline" method="post" action="/delete">'
                     f'<input type="hidden" name="id" value="{i["id"]}"><button type="submit" '
                     f'aria-label="Delete: {esc(i["title"])}">Delete</button></form></li>')
        left = sum(not i["done"] for i in req.state["items"])
        body = ('<form method="post" action="/add"><label for="title">New todo</label> '
                '<input id="title" name="title" maxlength="80"> <button type="submit">Add</button></form>'
                f'<ul aria-label="Todos">{rows}</ul><p>{left} item(s) left.</p>'
                '<form method="post" action="/clear-completed"><button type="submit">Clear completed</button></form>')
        error, req.state["error"] = req.state["error"], ""
        return self.page("Todos", body, error=error)

    def add(self, req: Request) -> Response:
        title = " ".join(req.arg("title").split())
        if not title:
            req.state["error"] = "A todo needs a title."
        elif any(i["title"].lower() == title.lower() for i in req.state["items"]):
            req.state["error"] = f'"{title}" is already on the list.'
        else:
            req.state["items"].append({"id": req.state["next_id"], "title": title, "done": False})
            req.state["next_id"] += 1
        return redirect("/")

    def _find(self, req: Request) -> dict[str, Any] | None:
        return next((i for i in req.state["items"] if str(i["id"]) == req.arg("id")), None)

    def toggle(self, req: Request) -> Response:
        item = self._find(req)
        if item is not None:
            item["done"] = not item["done"]
        return redirect("/")

    def delete(self, req: Request) -> Response:
        item = self._find(req)
        if item is not None:
            req.state["items"].remove(item)
        return redirect("/")

    def clear(self, req: Request) -> Response:
        req.state["items"] = [i for i in req.state["items"] if not i["done"]]
        return redirect("/")

    def check_todos(self, state: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Titles in `open` are present and not done, in `done` present and done, in `absent` gone."""
        by_title = {i["title"].lower(): i for i in state["items"]}
        problems = [f"missing or done: {t}" for t in args.get("open", [])
                    if t.lower() not in by_title or by_title[t.lower()]["done"]]
        problems += [f"missing or not done: {t}" for t in args.get("done", [])
                     if t.lower() not in by_title or not by_title[t.lower()]["done"]]
        problems += [f"still present: {t}" for t in args.get("absent", []) if t.lower() in by_title]
        if "count" in args and len(state["items"]) != args["count"]:
            problems.append(f"{len(state['items'])} items, expected {args['count']}")
        return verdict(not problems, {"problems": problems, "items": state["items"]})


APP = Todo()

if __name__ == "__main__":
    main(APP)
