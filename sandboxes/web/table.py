"""Staff directory: filter a table, select rows and export them; the exports are what the checks read."""

from __future__ import annotations

import random
from typing import Any

from ase_webkit import Request, Response, WebApp, esc, main, redirect, verdict

DEPARTMENTS = ["Engineering", "Sales", "Support", "Finance"]
FIRST = ["Ada", "Alan", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Edsger", "Radia",
         "Tim", "Hedy", "John", "Katherine", "Donald", "Sophie", "Niklaus", "Annie", "Guido"]
LAST = ["Byron", "Turing", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie", "Allen", "Dijkstra",
        "Perlman", "Berners", "Lamarr", "Backus", "Johnson", "Knuth", "Wilson", "Wirth", "Easley", "Rossum"]


def employees() -> list[dict[str, Any]]:
    """A fixed staff list (seeded, so tasks can name expected rows)."""
    rng = random.Random(7)
    return [{"id": i + 1, "name": f"{first} {LAST[i]}", "department": DEPARTMENTS[rng.randrange(4)],
             "salary": rng.randrange(50, 140) * 1000, "start_year": rng.randrange(2008, 2025)}
            for i, first in enumerate(FIRST)]


STAFF = employees()


def matches(row: dict[str, Any], dept: str = "", min_salary: int = 0, name: str = "") -> bool:
    return ((not dept or row["department"] == dept) and row["salary"] >= min_salary
            and name.lower() in row["name"].lower())


class Table(WebApp):
    name, title = "table", "Staff Directory"
    nav = [("/", "Directory"), ("/exports", "Exports")]

    def __init__(self) -> None:
        super().__init__()
        self.get.update({"/": self.directory, "/exports": self.exports})
        self.post.update({"/export": self.export})
        self.checks.update({"exported": self.check_exported})

    def initial_state(self, setup: dict[str, Any]) -> dict[str, Any]:
        return {"exports": [], "notice": ""}

    def directory(self, req: Request) -> Response:
        dept, name, min_raw, sort = req.arg("department"), req.arg("name"), req.arg("min_salary"), req.arg("sort")
        min_salary = int(min_raw) if min_raw.isdigit() else 0
        rows = [r for r in STAFF if matches(r, dept, min_salary, name)]
        if sort in ("name", "salary", "start_year"):
            rows.sort(key=lambda r: r[sort], reverse=sort == "salary")
        opts = "".join(f'<option{" selected" if d == dept else ""}>{d}</option>' for d in DEPARTMENTS)
        sorts = "".join(f'<option value="{k}"{" selected" if k == sort else ""}>{v}</option>' for k, v in
                        [("", "Default"), ("name", "Name"), ("salary", "Salary (highest first)"),
                         ("start_year", "Start year")])
        filters = ('<form method="get" action="/" aria-label="Filters"><label for="department">Department</label> '
                   f'<select id="department" name="department"><option value="">All</option>{opts}</select> '
                   '<label for="min_salary">Minimum salary</label> <input id="min_salary" name="min_salary" '
                   f'value="{esc(min_raw)}" inputmode="numeric"> <label for="name">Name contains</label> '
                   f'<input id="name" name="name" value="{esc(name)}"> <label for="sort">Sort by</label> '
                   f'<select id="sort" name="sort">{sorts}</select> <button type="submit">Apply filters</button>'
                   '</form>')
        body_rows = "".join(
            f'<tr><td><input type="checkbox" name="ids" value="{r["id"]}" form="export" '
            f'aria-label="Select {esc(r["name"])}"></td><td>{esc(r["name"])}</td><td>{r["department"]}</td>'
            f'<td>{r["salary"]:,}</td><td>{r["start_year"]}</td></tr>' for r in rows)
        table = ('<table aria-label="Employees"><thead><tr><th>Select</th><th>Name</th><th>Department</th>'
                 f'<th>Salary</th><th>Start year</th></tr></thead><tbody>{body_rows}</tbody></table>')
        shown = ",".join(str(r["id"]) for r in rows)
        export = ('<form id="export" method="post" action="/export">'
                  f'<input type="hidden" name="shown" value="{shown}">'
                  '<button type="submit" name="what" value="selected">Export selected</button> '
                  '<button type="submit" name="what" value="shown">Export all shown</button></form>')
        notice, req.state["notice"] = req.state["notice"], ""
        return self.page("Directory", f"{filters}<p>{len(rows)} employee(s) shown.</p>{table}{export}",
                         notice=notice)

    def export(self, req: Request) -> Response:
        raw = req.args("ids") if req.arg("what") == "selected" else req.arg("shown").split(",")
        ids = sorted({int(i) for i in raw if i.isdigit() and 1 <= int(i) <= len(STAFF)})
        if not ids:
            req.state["notice"] = "Nothing to export: no rows selected."
            return redirect("/")
        req.state["exports"].append(ids)
        req.state["notice"] = f"Exported {len(ids)} row(s) as export #{len(req.state['exports'])}."
        return redirect("/exports")

    def exports(self, req: Request) -> Response:
        items = "".join(f"<li>Export #{n}: " + ", ".join(esc(STAFF[i - 1]["name"]) for i in ids) + "</li>"
                        for n, ids in enumerate(req.state["exports"], 1))
        notice, req.state["notice"] = req.state["notice"], ""
        return self.page("Exports", f"<ol>{items}</ol>" if items else "<p>No exports yet.</p>", notice=notice)

    def check_exported(self, state: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """The latest export holds exactly the rows of `filter`, or the `top` N of a filter by salary."""
        flt = args.get("filter", {})
        rows = [r for r in STAFF if matches(r, flt.get("department", ""), int(flt.get("min_salary", 0)))]
        if "top" in args:
            rows = sorted(rows, key=lambda r: r["salary"], reverse=True)[: int(args["top"])]
        expected = sorted(r["id"] for r in rows)
        last = state["exports"][-1] if state["exports"] else []
        return verdict(last == expected, {"expected": expected, "exported": last})


APP = Table()

if __name__ == "__main__":
    main(APP)
